"""Acceptance rules: target logits + a draft tree -> the accepted path and one more token."""

from sdjax.verify.rules import (
    BlockVerification, RejectionSampling, TypicalAcceptance, VerifyResult, target_probs,
    verify_block, verify_greedy, verify_rejection, verify_typical,
)

__all__ = [
    "BlockVerification", "RejectionSampling", "TypicalAcceptance", "VerifyResult",
    "target_probs", "verify_block", "verify_greedy", "verify_rejection", "verify_typical",
]
