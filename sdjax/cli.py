"""The `sdjax` command line: `sdjax generate`, `sdjax demo`, `sdjax --help`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
from typing import Optional, Sequence

import jax
import yaml

import sdjax
from sdjax.config import SpecConfig, from_dict
from sdjax.data.corpus import SPLITS
from sdjax.models.families import MissingExtraError
from sdjax.pretrained import NAMES

# `sdjax.training.distill.DIVERGENCES` (named here so that the CLI starts without the
# training stack; a test keeps them equal).
DIVERGENCE_NAMES = ("fkl", "jsd", "rkl", "tvd")
# SpecConfig fields a preset or a flag may set (the model comes from --model).
_GENERATION_FIELDS = [f.name for f in dataclasses.fields(SpecConfig) if f.name != "model"]
# A preset names its verifier; the drafter comes from flags (it needs a model or heads).
VERIFIERS = {"rejection": sdjax.verify.RejectionSampling,
             "block": sdjax.verify.BlockVerification,
             "typical": sdjax.verify.TypicalAcceptance}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `sdjax COMMAND: error: ...`, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_at_least(low: int):
    """An argparse type: an int >= `low`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value

    return parse


positive_int = int_at_least(1)
seed_int = int_at_least(0)  # numpy's generators take no negative seeds


def _read_preset(path: str) -> dict:
    """A YAML generation preset as SpecConfig values (every key checked by name)."""
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of SpecConfig fields")
    if "model" in values:
        raise ValueError(f"{path}: the model comes from --model, not from a preset")
    if "drafter" in values:
        raise ValueError(f"{path}: a preset cannot set the drafter ({values['drafter']!r}); "
                         "choose it with --prompt-lookup, --draft-model or --heads")
    if "verifier" in values:
        name = values["verifier"]
        if name not in VERIFIERS:
            raise ValueError(f"{path}: unknown verifier {name!r}; choose from "
                             f"{sorted(VERIFIERS)}")
        values["verifier"] = VERIFIERS[name]()
    return values


def _spec_from_args(args, model_config: sdjax.ModelConfig) -> SpecConfig:
    values = _read_preset(args.config) if args.config else {}
    for name in _GENERATION_FIELDS:
        flag = getattr(args, name, None)
        if flag is not None:
            values[name] = flag
    return from_dict(SpecConfig, {"model": model_config, **values})


def _add_generation_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML preset of generation settings (see configs/)")
    parser.add_argument("--max-new-tokens", dest="max_new_tokens", type=int)
    parser.add_argument("--temperature", type=float, help="0 = greedy")
    parser.add_argument("--top-k", dest="top_k", type=int, help="0 = off")
    parser.add_argument("--top-p", dest="top_p", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--eos-token-id", dest="eos_token_id", type=int, nargs="*",
                        help="stop tokens (default: the model's; give none to never stop)")


def _print_result(out: sdjax.GenerateOutput, as_json: bool) -> None:
    stats = out.stats
    if as_json:
        print(json.dumps({
            "text": out.text, "tokens": [row[:n].tolist() for row, n in
                                         zip(out.tokens, out.num_tokens)],
            "new_tokens": stats["new_tokens"], "tokens_per_second": stats["tokens_per_second"],
            "compile_seconds": stats["compile_seconds"], "tau": stats["tau"],
        }))
        return
    for i, n in enumerate(out.num_tokens):
        print(out.text[i] if out.text else out.tokens[i, :n].tolist())
    print(f"\n{stats['new_tokens']} tokens in {stats['decode_seconds']:.3f} s "
          f"({stats['tokens_per_second']:.1f} tokens/s, tau {stats['tau']:.2f}); "
          f"compile {stats['compile_seconds']:.2f} s", file=sys.stderr)


def add_stop_head_flags(parser: argparse.ArgumentParser, scope: str) -> None:
    """--stop-head / --stop-threshold (SpecDec++), for `generate` and `bench`."""
    parser.add_argument("--stop-head", metavar="DIR",
                        help=f"{scope}SpecDec++'s acceptance head for the draft model (from "
                             "`sdjax train acceptance`): chains stop where it predicts a "
                             "rejection")
    parser.add_argument("--stop-threshold", type=float, metavar="H",
                        help="stop once the predicted chance of a rejection exceeds H "
                             "(default 0.5)")


def stop_threshold(args) -> float:
    """--stop-threshold, or the default; refused without --stop-head (it would be ignored)."""
    from sdjax.drafters.acceptance import DEFAULT_STOP_THRESHOLD

    if args.stop_threshold is not None and not args.stop_head:
        raise ValueError("--stop-threshold needs --stop-head")
    return DEFAULT_STOP_THRESHOLD if args.stop_threshold is None else args.stop_threshold


def _drafter_from_args(args, target: sdjax.LoadedModel):
    """(drafter, draft params) chosen by --prompt-lookup / --draft-model / --heads /
    --datastore / --exit-layer / --skip-layers / --lookahead."""
    chosen = (args.prompt_lookup, args.draft_model, args.heads, args.datastore,
              args.exit_layer, args.skip_layers, args.lookahead or None)
    if sum(x is not None for x in chosen) > 1:
        raise ValueError("choose one of --prompt-lookup, --draft-model, --heads, "
                         "--datastore, --exit-layer, --skip-layers and --lookahead")
    if args.rest_context and not args.datastore:
        raise ValueError("--rest-context needs --datastore")
    if args.stop_head and not args.draft_model:
        raise ValueError("--stop-head needs --draft-model (the draft it was trained for)")
    threshold = stop_threshold(args)
    own_head = args.exit_layer is not None or args.skip_layers is not None or args.lookahead
    if args.draft_vocab and not own_head:
        raise ValueError("--draft-vocab needs --exit-layer, --skip-layers or --lookahead")
    if own_head:
        return _own_draft(args, target)
    if args.datastore:
        from sdjax.drafters import load_datastore
        from sdjax.drafters.rest import rest_for

        if target.tokenizer is None:
            raise ValueError(f"{args.model} has no tokenizer to check the datastore against")
        store = load_datastore(args.datastore, target.tokenizer)
        return rest_for(store, context=args.rest_context), store
    if args.heads:
        from sdjax.heads import load_heads, make_drafter
        from sdjax.pretrained import heads_folder

        heads, params = load_heads(heads_folder(args.heads, args.model))
        return make_drafter(heads), params
    if args.prompt_lookup is not None:
        return sdjax.drafters.PromptLookup(num_draft=args.prompt_lookup), None
    if args.draft_model:
        from sdjax.drafters import cross_vocab
        from sdjax.drafters.draft_model import load_draft_model

        draft, draft_params = load_draft_model(args.draft_model, dtype=args.dtype)
        if (draft.tokenizer is not None and target.tokenizer is not None
                and not cross_vocab.shares_tokenizer(target.tokenizer, draft.tokenizer)):
            if args.stop_head:
                raise ValueError("--stop-head needs a draft that shares the target's tokenizer")
            return (cross_vocab.CrossVocabDraft(draft.config, num_draft=args.gamma),
                    cross_vocab.with_token_map(draft.params,
                                               cross_vocab.models_token_map(target, draft)))
        if not args.stop_head:
            return sdjax.drafters.DraftModel(draft.config, num_draft=args.gamma), draft_params
        from sdjax.drafters.acceptance import load_acceptance_head, with_acceptance_head

        head_cfg, head = load_acceptance_head(args.stop_head)
        return (sdjax.drafters.DraftModel(draft.config, num_draft=args.gamma, stop_head=head_cfg,
                                          stop_threshold=threshold),
                with_acceptance_head(draft_params, head))
    return None, None


def _own_draft(args, target: sdjax.LoadedModel):
    """The drafts made of the target itself: SelfDraft of --exit-layer / --skip-layers,
    or Lookahead (--lookahead), with --draft-vocab's head."""
    from sdjax.drafters.lookahead import Lookahead
    from sdjax.drafters.self_draft import SelfDraft

    num_layers = target.config.num_layers
    if args.lookahead:
        drafter = Lookahead(from_context=args.lookahead == "context")
    elif args.exit_layer is not None:
        if args.exit_layer > num_layers:
            raise ValueError(f"--exit-layer {args.exit_layer}: the model has {num_layers} "
                             "layers")
        drafter = SelfDraft.early_exit(args.exit_layer, num_draft=args.gamma)
    else:
        bad = sorted(set(args.skip_layers) - set(range(num_layers)))
        if bad:
            raise ValueError(f"--skip-layers {bad}: the model has layers 0..{num_layers - 1}")
        kept = tuple(i for i in range(num_layers) if i not in args.skip_layers)
        if not kept:
            raise ValueError("--skip-layers would skip every layer")
        drafter = SelfDraft(kept, num_draft=args.gamma)
    if not args.draft_vocab:
        return drafter, None
    if target.tokenizer is None:
        raise ValueError(f"{args.model} has no tokenizer to count --draft-vocab's tokens with")
    from sdjax.pretrained import stdlib_vocab

    return drafter, {"vocab_ids": stdlib_vocab(target.tokenizer, args.draft_vocab,
                                               target.config.vocab_size)}


def cmd_generate(args) -> None:
    """`sdjax generate`: decode prompts and print the text."""
    from sdjax.pretrained import resolve_model

    model = resolve_model(args.model, dtype=args.dtype)
    drafter, draft_params = _drafter_from_args(args, model)
    cfg = _spec_from_args(args, model.config).replace(drafter=drafter)
    if args.prompt_file:
        with open(args.prompt_file) as f:
            prompt = f.read()
    elif args.prompt is not None:
        prompt = args.prompt
    else:
        raise ValueError("give --prompt TEXT or --prompt-file FILE")
    if model.tokenizer is None:
        raise ValueError(f"{args.model} has no tokenizer files; a text prompt needs one")
    print(f"compiling and decoding up to {cfg.max_new_tokens} tokens...", file=sys.stderr)
    _print_result(sdjax.generate(model.params, prompt, cfg, draft_params=draft_params,
                                 tokenizer=model.tokenizer), args.json)


MODEL_HELP = (f"a checkpoint folder, a .gguf file, or a named model ({', '.join(NAMES)}; "
              "converted once into ~/.cache/sdjax)")

# Variants the demo leaves out unless asked for (the benchmark runs them all).
DEMO_SKIPS = ("draft_adaptive", "eagle", "eagle2_adaptive", "kangaroo_early_stop",
              "redrafter_depth3")


def _demo_setup(args):
    """(target, drafters by method, prompts) for the demo's model."""
    from sdjax.bench.suite import REST_METHODS, load_pair, methods, self_drafts
    from sdjax.bench.tasks import build_tasks
    from sdjax.pretrained import TESTBED, pretrained_path, shipped_drafts, stdlib_datastore

    heads = list(shipped_drafts(args.model).values())
    if args.model == TESTBED:
        from sdjax import testbed

        target, draft, heads = load_pair(testbed.path("target"), testbed.path("draft"),
                                         heads, dtype=args.dtype)
        categories = ["function_body"]
    else:  # a real model: no draft model, the drafts shipped for it
        target, draft, heads = load_pair(pretrained_path(args.model), None, heads,
                                         dtype=args.dtype)
        categories = ["function_body", "prose"]
    tasks = build_tasks(target.tokenizer, 1, categories=categories)
    # REST's datastore (the stdlib's, built into the cache once) only when asked for.
    wanted = set(REST_METHODS) & set(args.method or ())
    datastore = stdlib_datastore(target.tokenizer) if wanted else None
    self_draft = self_drafts(target, args.method or (), args.gamma)
    cross = None  # the testbed's draft drafting for a real model, only when asked for
    if args.model != TESTBED and "cross_vocab" in (args.method or ()):
        from sdjax import testbed
        from sdjax.drafters.cross_vocab import load_cross_draft

        cross = load_cross_draft(testbed.path("draft"), target, args.dtype)
    return (target, methods(draft, args.gamma, args.lookup, heads, datastore, self_draft,
                            cross_draft=cross),
            [ts[0] for ts in tasks.values()])


def cmd_demo(args) -> None:
    """Completes held-out code (and, on a real model, prose) autoregressively and with
    speculative methods, and prints tokens/s, tau and the speedup."""
    from tqdm import tqdm

    target, available, tasks = _demo_setup(args)
    if args.method is None:
        args.method = [m for m in available if m not in DEMO_SKIPS]
    unknown = sorted(set(args.method) - set(available))
    if unknown:
        raise ValueError(f"unknown methods {unknown} for {args.model}; choose from "
                         f"{sorted(available)}")
    count = lambda p: sum(x.size for x in jax.tree.leaves(p)) / 1e6
    print(f"sdjax demo: {args.model} ({count(target.params):.1f}M parameters, "
          f"{args.dtype}) on {jax.devices()[0].platform}", file=sys.stderr)
    base = SpecConfig(model=target.config, max_new_tokens=args.max_new_tokens, eos_token_id=())
    runs = ["autoregressive", *[m for m in args.method if m != "autoregressive"]]
    with tqdm(total=len(tasks) * len(runs) * 4, desc="compile + 3 timed runs per method",
              file=sys.stderr) as bar:
        for task in tasks:
            results = {}
            for name in runs:
                drafter, draft_params = available[name]
                decode = lambda: sdjax.generate(
                    target.params, task.prompt, base.replace(drafter=drafter),
                    draft_params=draft_params, tokenizer=target.tokenizer)
                compile_seconds = decode().stats["compile_seconds"]
                bar.update()
                outs = []
                for _ in range(3):  # best of 3: a shared, noisy machine
                    outs.append(decode())
                    bar.update()
                results[name] = (max(outs, key=lambda o: o.stats["tokens_per_second"]),
                                 compile_seconds)
            bar.clear()
            _print_demo(target.tokenizer.decode(task.prompt, skip_special_tokens=True), task,
                        results, args.max_new_tokens)


def _print_demo(prompt_text: str, task, results: dict, new_tokens: int) -> None:
    reference = results["autoregressive"][0]
    print(f"\n--- {task.category} prompt ({task.source}, last lines) ---")
    print("\n".join(prompt_text.splitlines()[-6:]))
    print(f"--- completion ({new_tokens} tokens, greedy) ---")
    print(reference.text[0])
    print("---")
    ar_rate = reference.stats["tokens_per_second"]
    width = max(16, *map(len, results))
    print(f"{'method':<{width}} {'tokens/s':>9} {'tau':>5} {'speedup':>8} {'compile s':>10} "
          f"same tokens")
    for name, (out, compile_seconds) in results.items():
        rate = out.stats["tokens_per_second"]
        same = bool((out.tokens == reference.tokens).all())
        print(f"{name:<{width}} {rate:>9.1f} {out.stats['tau']:>5.2f} {rate / ar_rate:>7.2f}x "
              f"{compile_seconds:>10.1f} {same}")


def cmd_convert(args) -> None:
    """`sdjax convert`: a GGUF file to a Hugging Face folder."""
    from sdjax.models.gguf import convert_gguf

    print(f"converted {args.gguf} to {convert_gguf(args.gguf, args.output)}")


def _run_overrides(args) -> dict:
    """The config overrides every `sdjax train` kind takes (None: the config's own)."""
    return dict(steps=args.steps, output=args.output, seed=args.seed)


def cmd_train_lm(args) -> None:
    """`sdjax train lm`."""
    from sdjax.training.lm import load_config, run_lm

    cfg = load_config(args.config, **_run_overrides(args))
    run_lm(cfg, stop_at=args.stop_at)


def cmd_bench(args) -> None:
    """`sdjax bench`."""
    from sdjax.bench import suite

    suite.main(args)


def cmd_train_heads(args) -> None:
    """`sdjax train heads`."""
    from sdjax.training.heads import load_config, run_heads

    cfg = load_config(args.config, **_run_overrides(args))
    run_heads(cfg, stop_at=args.stop_at)


def cmd_train_distill(args) -> None:
    """`sdjax train distill`."""
    from sdjax.training.distill import load_config, run_distill

    cfg = load_config(args.config, **_run_overrides(args), divergence=args.divergence,
                      on_policy=args.on_policy)
    run_distill(cfg, stop_at=args.stop_at)


def cmd_train_acceptance(args) -> None:
    """`sdjax train acceptance`."""
    from sdjax.training.acceptance import load_config, run_acceptance

    cfg = load_config(args.config, **_run_overrides(args))
    run_acceptance(cfg, stop_at=args.stop_at)


def cmd_train_generations(args) -> None:
    """`sdjax train generations`."""
    from sdjax.training.generations import run_generations

    run_generations(args.target, args.output, num_prompts=args.prompts,
                    prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                    temperature=args.temperature, batch_size=args.batch_size, seed=args.seed)


TEXT_ENDINGS = (".py", ".md", ".txt", ".rst")  # what `datastore build` reads in a folder


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _corpus_texts(sources: Sequence[str], split: str) -> list:
    """The texts of named corpora (their `split`) and of text files / folders."""
    from sdjax.data.corpus import SOURCES, read_split

    texts = []
    for source in sources:
        if source in SOURCES:
            texts += read_split(split, source=source)
        elif os.path.isdir(source):
            paths = sorted(os.path.join(folder, name) for folder, _, names in os.walk(source)
                           for name in names if name.endswith(TEXT_ENDINGS))
            if not paths:
                raise FileNotFoundError(f"no {'/'.join(TEXT_ENDINGS)} files under {source}")
            texts += [_read_text(path) for path in paths]
        elif os.path.isfile(source):
            texts.append(_read_text(source))
        else:
            raise FileNotFoundError(f"corpus {source!r} is not one of {sorted(SOURCES)}, a "
                                    "file or a folder")
    return texts


def cmd_datastore_build(args) -> None:
    """`sdjax datastore build`: REST's datastore of a corpus in a model's tokenizer."""
    from sdjax.data.tokenizer import load_tokenizer
    from sdjax.drafters.datastore import write_datastore
    from sdjax.pretrained import model_folder, resolve_model

    if args.model.lower().endswith(".gguf"):
        tokenizer = resolve_model(args.model).tokenizer
    else:
        tokenizer = load_tokenizer(model_folder(args.model))
    if tokenizer is None:
        raise ValueError(f"{args.model} has no tokenizer to build a datastore with")
    texts = _corpus_texts(args.corpus, args.split)
    store = write_datastore(args.out, tokenizer, texts, args.depth, model=args.model,
                            corpus=list(args.corpus), split=args.split)
    print(f"wrote {args.out}: {store.size:,} tokens of {len(texts)} texts, suffixes sorted by "
          f"{store.depth} tokens")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = Parser(
        prog="sdjax", description="Speculative and multi-head decoding for JAX language models.")
    parser.add_argument("--version", action="version", version=sdjax.__version__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="complete a prompt with a checkpoint folder",
                              description="Complete a prompt with a Hugging Face checkpoint "
                                          "folder (config.json, model.safetensors, tokenizer).")
    gen.add_argument("--model", required=True, help=MODEL_HELP)
    gen.add_argument("--prompt", help="prompt text")
    gen.add_argument("--prompt-file", help="read the prompt from this file")
    gen.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    gen.add_argument("--json", action="store_true", help="print one JSON object")
    gen.add_argument("--prompt-lookup", type=int, metavar="N",
                     help="speculate with prompt lookup, N drafted tokens per cycle")
    gen.add_argument("--draft-model", metavar="DIR",
                     help="speculate with this checkpoint as draft model (with a tokenizer "
                          "of its own, it drafts the tokens both share: CrossVocabDraft)")
    gen.add_argument("--gamma", type=int, default=4, help="draft-model tokens per cycle")
    add_stop_head_flags(gen, "with --draft-model: ")
    gen.add_argument("--heads", metavar="DIR|KIND",
                     help="speculate with Medusa / Hydra / MLP-speculator heads, an EAGLE "
                          "draft or a Kangaroo adapter trained on this model (`sdjax train "
                          "heads`): their folder, or the kind of one shipped for a named "
                          "model (e.g. eagle3, kangaroo)")
    gen.add_argument("--datastore", metavar="DIR",
                     help="speculate with REST: drafts retrieved from this datastore "
                          "(`sdjax datastore build`)")
    gen.add_argument("--rest-context", type=int, default=0, metavar="C",
                     help="with --datastore: also draft from the C latest earlier matches "
                          "in the row's own prompt and generated text (default 0; 1 made "
                          "REST 2.4x instead of 1.1x on Gemma 3 code completion, "
                          "BENCHMARKS.md)")
    gen.add_argument("--exit-layer", type=positive_int, metavar="E",
                     help="speculate with the model's own first E layers (early-exit "
                          "self-speculation), --gamma tokens per cycle")
    gen.add_argument("--skip-layers", type=int, nargs="+", metavar="LAYER",
                     help="speculate with the model's own layers but these (layer "
                          "skipping; sdjax.calibrate.skip_layers picks them)")
    gen.add_argument("--lookahead", nargs="?", const="window", choices=["window", "context"],
                     help="speculate with Lookahead decoding: n-grams of the model's own "
                          "Jacobi window; 'context' also pools the n-grams of the prompt "
                          "and of the generated text")
    gen.add_argument("--draft-vocab", type=positive_int, metavar="K",
                     help="with --exit-layer / --skip-layers / --lookahead: draft (or score "
                          "the window) over the K most "
                          "frequent tokens of the stdlib's train split (a smaller LM head; "
                          "16384 on Gemma 3 cut a draft step from ~37 to ~19 ms, "
                          "BENCHMARKS.md)")
    _add_generation_flags(gen)
    gen.set_defaults(func=cmd_generate)

    demo = commands.add_parser(
        "demo", help="complete code and prose with a real model, print the speedup",
        description="Complete a held-out standard-library function (and, on a real model, "
                    "held-out prose) autoregressively and with speculative methods; print "
                    "tokens/s, tau and the speedup.")
    demo.add_argument("--model", default="gemma3-270m", choices=NAMES,
                      help="gemma3-270m (needs the [gemma3] extra) or the bundled testbed, "
                           "which also has trained drafts")
    demo.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    demo.add_argument("--max-new-tokens", type=int, default=128)
    demo.add_argument("--method", nargs="+",
                      help="speculative methods to compare with autoregressive decoding: "
                           "prompt_lookup rest rest_context lookahead lookahead_context "
                           "early_exit layer_skip "
                           "draft_chain draft_adaptive draft_tree medusa "
                           "hydra mlp_speculator eagle eagle2 eagle2_adaptive eagle3 kangaroo "
                           "kangaroo_early_stop cross_vocab (default: those the model has "
                           "drafts for, but "
                           + ", ".join(DEMO_SKIPS) + "; rest*, lookahead*, early_exit and "
                           "layer_skip only when named: they build the stdlib's datastore on first "
                           "use, ~30 s, and layer_skip calibrates, ~1 min on Gemma 3; "
                           "cross_vocab, a real model's only: the testbed's draft through the "
                           "tokens both tokenizers share)")
    demo.add_argument("--gamma", type=positive_int, default=4, help="draft-model chain length")
    demo.add_argument("--lookup", type=positive_int, default=7,
                      help="prompt-lookup tokens (7: 8 verified rows, BENCHMARKS.md)")
    demo.set_defaults(func=cmd_demo)

    convert = commands.add_parser(
        "convert", help="convert a .gguf file into a Hugging Face checkpoint folder",
        description="Dequantise a GGUF file (llama, qwen2, gemma2, gemma3) into a Hugging "
                    "Face folder (float32 safetensors, config.json, tokenizer) that "
                    "transformers and sdjax.load_hf load.")
    convert.add_argument("gguf", help="the .gguf file")
    convert.add_argument("output", help="the folder to write")
    convert.set_defaults(func=cmd_convert)

    datastore = commands.add_parser(
        "datastore", help="build REST's datastore of a corpus",
        description="REST's datastore: a corpus in a model's tokenizer and its suffix "
                    "array, for `sdjax generate --datastore` and sdjax.drafters.Rest.")
    actions = datastore.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = actions.add_parser(
        "build", help="tokenize a corpus with a model's tokenizer and index it",
        description="Tokenize a corpus (the stdlib's or the system docs' split, or your "
                    "own text files and folders) with a model's tokenizer and write it "
                    "with its suffix array to OUT.")
    build.add_argument("--model", required=True, help=MODEL_HELP + " (its tokenizer)")
    build.add_argument("--corpus", nargs="+", default=["stdlib"], metavar="NAME|PATH",
                       help="stdlib, docs, or text files / folders ("
                            + ", ".join(TEXT_ENDINGS) + "); default: stdlib")
    build.add_argument("--split", default="train", choices=list(SPLITS),
                       help="the named corpora's split (the bench's prompts are the "
                            "benchmark split's; default: train)")
    build.add_argument("--depth", type=positive_int, default=16,
                       help="longest context suffix the datastore can be searched by")
    build.add_argument("--out", required=True, help="the folder to write")
    build.set_defaults(func=cmd_datastore_build)

    from sdjax.bench import suite

    bench = commands.add_parser(
        "bench", help="Spec-Bench-style benchmark of every method on the testbed",
        description=suite.__doc__.split("\n\n")[1].replace("\n", " "))
    suite.add_arguments(bench)
    bench.set_defaults(func=cmd_bench)

    train = commands.add_parser(
        "train", help="train a language model or draft heads, distil a draft model, or "
                      "train its SpecDec++ stop head")
    train_kinds = train.add_subparsers(dest="kind", required=True, metavar="KIND")
    lm = train_kinds.add_parser(
        "lm", help="train a language model on the stdlib corpus",
        description="Train a Llama-architecture language model on the Python standard "
                    "library's source (tokenizer, optax AdamW, orbax checkpoints with "
                    "resume), then export it as a Hugging Face checkpoint to OUTPUT/hf.")
    lm.set_defaults(func=cmd_train_lm)
    heads = train_kinds.add_parser(
        "heads", help="train Medusa, Hydra, MLP-speculator, EAGLE or Kangaroo drafts on a "
                      "frozen target",
        description="Train Medusa / Hydra heads, an MLP speculator, an EAGLE / EAGLE-3 "
                    "draft or a Kangaroo adapter (optionally over a reduced draft "
                    "vocabulary) on a frozen target "
                    "(a checkpoint folder or a named model) over the stdlib's code, English "
                    "prose, or the target's own generations (self-distillation, optax, orbax "
                    "checkpoints with resume), then export them to OUTPUT/heads.")
    distill = train_kinds.add_parser(
        "distill", help="align a draft model to a frozen target (DistillSpec, Seq-KD)",
        description="Distil a draft model that shares the target's tokenizer (a checkpoint "
                    "folder, or copies of some of the target's own layers, optionally over a "
                    "reduced draft vocabulary) towards the "
                    "target's next-token distributions: forward / reverse KL, Jensen-Shannon "
                    "or total variation, on the corpus, on the target's own generations "
                    "(Seq-KD) and on the draft's own samples (on-policy), with optax and "
                    "orbax checkpoints (exact resume); export it to OUTPUT/hf.")
    distill.add_argument("--divergence", choices=DIVERGENCE_NAMES,
                         help="override the config's divergence")
    distill.add_argument("--on-policy", type=float, metavar="FRACTION",
                         help="override the config's fraction of on-policy rows")
    distill.set_defaults(func=cmd_train_distill)
    acceptance = train_kinds.add_parser(
        "acceptance", help="train SpecDec++'s acceptance head for a (draft, target) pair",
        description="Train the acceptance-prediction head of SpecDec++ on a frozen draft "
                    "model and target: the draft continues corpus prompts, the target labels "
                    "each drafted token with its chance of acceptance, and the head learns it "
                    "from the draft's hidden state (optax, orbax checkpoints with exact "
                    "resume); export it to OUTPUT/acceptance_head, for `sdjax generate "
                    "--draft-model DRAFT --stop-head OUTPUT/acceptance_head`.")
    acceptance.set_defaults(func=cmd_train_acceptance)
    for kind in (lm, heads, distill, acceptance):
        kind.add_argument("--config", required=True, help="YAML training config (configs/train/)")
        kind.add_argument("--steps", type=int, help="override the config's total steps")
        kind.add_argument("--output", help="override the config's run folder")
        kind.add_argument("--seed", type=seed_int, help="override the config's seed (initial "
                          "weights and batch order: another seed continues a run on "
                          "other batches)")
        kind.add_argument("--stop-at", type=positive_int, metavar="STEP",
                          help="checkpoint and stop at this step (run again to resume)")
    heads.set_defaults(func=cmd_train_heads)
    generations = train_kinds.add_parser(
        "generations", help="write the target's own generations as training shards",
        description="Continue corpus prompts with the target (sdjax generate, batched) and "
                    "write prompt + continuation token shards for head training "
                    "(`generations: FOLDER` in a heads config).")
    generations.add_argument("--target", required=True, help="target checkpoint folder")
    generations.add_argument("--output", required=True, help="folder for the shards")
    generations.add_argument("--prompts", type=positive_int, default=256)
    generations.add_argument("--prompt-len", type=positive_int, default=64)
    generations.add_argument("--new-tokens", type=positive_int, default=192)
    generations.add_argument("--temperature", type=float, default=0.0)
    generations.add_argument("--batch-size", type=positive_int, default=8)
    generations.add_argument("--seed", type=seed_int, default=0)
    generations.set_defaults(func=cmd_train_generations)
    return parser


# What a user's mistake raises: a bad value or type, a missing or unreadable file, a
# malformed YAML file, a missing extra. Each ends the command with one line.
USER_ERRORS = (ValueError, TypeError, OSError, yaml.YAMLError, MissingExtraError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs a command; a user's mistake is one line and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as err:
        if os.environ.get("SDJAX_DEBUG"):
            raise  # the traceback, for a bug report
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"sdjax {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


def exit_on_interrupt() -> None:
    """Ctrl-C ends the process at once, with one line and status 130, even while XLA
    compiles or runs (a Python handler alone would wait for it to return): the signal
    wakes a thread that exits for the blocked main thread."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)

    def watch():
        while os.read(read_fd, 1) != bytes([signal.SIGINT]):
            pass
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        sys.stderr.write("\nsdjax: interrupted\n")
        sys.stderr.flush()
        os._exit(130)

    threading.Thread(target=watch, daemon=True).start()
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)


def entry() -> None:
    """The `sdjax` console command."""
    exit_on_interrupt()
    sys.exit(main())


if __name__ == "__main__":
    entry()
