"""Acceptance rules: target logits + a draft tree -> the accepted path and one more token."""

from sdjax.protocols import Verifier, VerifyResult
from sdjax.verify.rules import (
    BlockVerification,
    RejectionSampling,
    SampledVerifier,
    TypicalAcceptance,
    target_probs,
    verify_block,
    verify_greedy,
    verify_rejection,
    verify_typical,
)

__all__ = [
    "BlockVerification", "RejectionSampling", "SampledVerifier", "TypicalAcceptance",
    "Verifier", "VerifyResult", "target_probs", "verify_block", "verify_greedy",
    "verify_rejection", "verify_typical",
]
