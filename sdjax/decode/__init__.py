"""Decoding: one job per module.

- `prompts`: prompts in, right-padded id buckets out; `prefill`, the target's first
  forward (public: `sdjax.bench.cost` times it).
- `loop`: `decode_loop`, the jittable draft -> verify -> commit `lax.while_loop`.
- `compiled`: the executables this process keeps, keyed on what changes the program.
- `api`: `generate` and its `pmap`-style entry `generate_pmapped`.
"""

from sdjax.decode.api import (
           GenerateOutput,
           acceptance_summary,
           generate,
           generate_pmapped,
           prng_key,
)
from sdjax.decode.compiled import clear_compiled, compile_count
from sdjax.decode.loop import DecodeResult, decode_loop, drafter_of, sequence_length
from sdjax.decode.prompts import Prefill, Prompt, bucket_length, prefill, prepare_prompts

__all__ = ["DecodeResult", "GenerateOutput", "Prefill", "Prompt", "acceptance_summary",
           "bucket_length", "clear_compiled", "compile_count", "decode_loop", "drafter_of",
           "generate", "generate_pmapped", "prefill", "prepare_prompts", "prng_key",
           "sequence_length"]
