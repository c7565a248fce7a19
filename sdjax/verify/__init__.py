"""Acceptance rules: target logits + a draft tree -> the accepted path and one more token."""

from sdjax.verify.rules import VerifyResult, verify, verify_greedy, verify_rejection

__all__ = ["VerifyResult", "verify", "verify_greedy", "verify_rejection"]
