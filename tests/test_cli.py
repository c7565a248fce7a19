"""The `sdjax` command line, end to end."""

import json
import shutil
import subprocess
import sys

import jax
import pytest
import yaml

import sdjax
from sdjax import cli


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_dir):
    path = tmp_path_factory.mktemp("cli_model")
    cfg = sdjax.ModelConfig(vocab_size=320, hidden_size=32, num_layers=1,
                            num_heads=2, num_kv_heads=1, head_dim=16, intermediate_size=64,
                            max_position_embeddings=128, eos_token_id=(0,))
    import transformers
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    sdjax.save_hf(str(path), cfg, sdjax.init_params(cfg, jax.random.PRNGKey(3)), tok)
    return str(path)


def test_help_lists_the_commands():
    result = subprocess.run([sys.executable, "-m", "sdjax.cli", "--help"],
                            capture_output=True, text=True, check=True)
    for command in ("generate", "demo", "bench", "train"):
        assert command in result.stdout


def test_generate_matches_the_library(checkpoint, capsys):
    assert cli.main(["generate", "--model", checkpoint, "--prompt", "def f(x):",
                     "--max-new-tokens", "9", "--eos-token-id", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    model = sdjax.load_hf(checkpoint)
    cfg = sdjax.SpecConfig(model=model.config, max_new_tokens=9, eos_token_id=())
    out = sdjax.generate(model.params, "def f(x):", cfg, tokenizer=model.tokenizer)
    assert printed["tokens"] == [out.tokens[0].tolist()]
    assert printed["text"] == out.text


def test_generate_reads_a_yaml_preset_and_flags_override_it(checkpoint, tmp_path, capsys):
    preset = tmp_path / "p.yaml"
    preset.write_text("max_new_tokens: 50\ntemperature: 0.8\nseed: 4\n")
    assert cli.main(["generate", "--model", checkpoint, "--prompt", "x = 1",
                     "--config", str(preset), "--max-new-tokens", "5",
                     "--eos-token-id", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["tokens"][0]) == 5


@pytest.mark.parametrize("extra,message", [
    (["--config", "BAD"], "unknown SpecConfig key(s) ['temprature']"),
    (["--top-p", "2"], "top_p must be in (0, 1]"),
    ([], "give --prompt"),
])
def test_generate_errors_are_clear(checkpoint, tmp_path, capsys, extra, message):
    preset = tmp_path / "bad.yaml"
    preset.write_text("temprature: 0.5\n")
    extra = [str(preset) if a == "BAD" else a for a in extra]
    prompt = [] if not extra else ["--prompt", "x"]
    assert cli.main(["generate", "--model", checkpoint, *prompt, *extra]) == 2
    assert message in capsys.readouterr().err


# (what, preset YAML or None, extra flags, message fragment): each exits 2 with one line.
CLI_CASES = [
    ("NaN temperature", None, ["--temperature", "nan"], "temperature must be finite"),
    ("zero new tokens", None, ["--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
    ("EOS outside the vocabulary", None, ["--eos-token-id", "99999"], "outside the vocabulary"),
    ("prompt lookup 0", None, ["--prompt-lookup", "0"], "num_draft"),
    ("gamma 0", None, ["--draft-model", "SELF", "--gamma", "0"], "num_draft must be >= 1"),
    ("two drafters", None, ["--prompt-lookup", "2", "--draft-model", "SELF"], "choose one"),
    ("preset drafter", "drafter: medusa\n", [], "a preset cannot set the drafter ('medusa')"),
    ("preset verifier", "verifier: fastest\n", [], "unknown verifier 'fastest'"),
    ("preset model", "model: llama\n", [], "the model comes from --model"),
    ("preset typo", "temprature: 0.5\n", [], "unknown SpecConfig key(s) ['temprature']"),
    ("preset EOS string", "eos_token_id: '63'\n", [], "eos_token_id must be"),
    ("preset float steps", "max_new_tokens: 2.5\n", [], "max_new_tokens must be int"),
    ("preset not a mapping", "- 1\n- 2\n", [], "must hold a mapping"),
    ("preset not YAML", "a: [1,\n", [], "expected"),
    ("preset missing", "MISSING", [], "No such file"),
    ("missing .gguf", None, ["--model", "absent.gguf"], "GGUF file 'absent.gguf' does not exist"),
    ("missing folder", None, ["--model", "absent_dir"], "checkpoint folder 'absent_dir' does not"),
]


@pytest.mark.parametrize("what,preset,extra,message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_generate_user_errors_exit_2_with_one_line(checkpoint, tmp_path, capsys, what, preset,
                                                     extra, message):
    flags = [checkpoint if a == "SELF" else a for a in extra]
    if preset is not None:
        path = tmp_path / "preset.yaml"
        if preset != "MISSING":
            path.write_text(preset)
        flags += ["--config", str(path)]
    model = [] if "--model" in flags else ["--model", checkpoint]
    assert cli.main(["generate", *model, "--prompt", "x", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sdjax generate: error:"), err
    assert message in err


@pytest.mark.parametrize("command,config,message", [
    ("lm", "model: {hiden_size: 32}\noutput: run\n", "unknown ModelConfig key(s)"),
    ("lm", "model: {}\noutput: run\nlearning_rate: fast\n", "learning_rate must be float"),
    ("heads", "target: t\noutput: run\nkind: medusa2\n", "unknown head kind 'medusa2'"),
    ("heads", "target: t\noutput: run\nsteps: 0\n", "steps must be >= 1"),
    ("heads", "target: t\noutput: run\nfeature_layers: 3\n", "feature_layers must be"),
    ("distill", "target: t\ndraft: d\noutput: run\ndivergence: kl\n",
     "divergence must be one of"),
    ("acceptance", "target: t\ndraft: d\noutput: run\nprompt_len: 600\n",
     "prompt_len must be in"),
    ("heads", "target: t\noutput: run\nseed: -1\n", "seed must be >= 0"),
])
def test_train_config_errors_exit_2_before_any_work(tmp_path, capsys, command, config,
                                                     message):
    path = tmp_path / "run.yaml"
    path.write_text(config)
    assert cli.main(["train", command, "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,message", [
    (["bench", "--prompts", "0"], "argument --prompts: 0 must be >= 1"),
    (["generate", "--model", "x", "--max-new-tokens", "many"], "invalid int value: 'many'"),
    (["train", "generations", "--target", "t", "--output", "o", "--batch-size", "-1"],
     "-1 must be >= 1"),
    (["demo", "--model", "gpt5"], "invalid choice: 'gpt5'"),
    (["bench", "--lookup", "0"], "argument --lookup: 0 must be >= 1"),
    (["train", "heads", "--config", "c.yaml", "--seed", "-2"],
     "argument --seed: -2 must be >= 0"),
    (["train", "lm", "--config", "c.yaml", "--stop-at", "0"],
     "argument --stop-at: 0 must be >= 1"),
    (["generate", "--model", "x", "--lookahead", "sideways"], "invalid choice: 'sideways'"),
])
def test_malformed_flags_are_one_line_too(capsys, argv, message):
    with pytest.raises(SystemExit) as raised:
        cli.main(argv)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_a_preset_names_its_verifier(checkpoint, tmp_path, capsys):
    preset = tmp_path / "typical.yaml"
    preset.write_text("verifier: typical\nmax_new_tokens: 3\n")
    assert cli.main(["generate", "--model", checkpoint, "--prompt", "x", "--config",
                     str(preset), "--prompt-lookup", "2", "--eos-token-id", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["tokens"][0]) == 3


def test_ctrl_c_ends_a_command_at_once_with_status_130(tmp_path):
    """SIGINT while XLA compiles: one line and status 130 within seconds."""
    import signal
    import time

    command = [sys.executable, "-m", "sdjax.cli", "demo", "--model", "testbed"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    time.sleep(8)  # imports done; loading or compiling
    sent = time.perf_counter()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    assert time.perf_counter() - sent < 10
    assert err.rstrip().splitlines()[-1] == "sdjax: interrupted"


def test_generate_on_a_missing_folder_and_without_tokenizer(checkpoint, tmp_path, capsys):
    assert cli.main(["generate", "--model", str(tmp_path / "none"), "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(f"{checkpoint}/{name}", bare)
    assert cli.main(["generate", "--model", str(bare), "--prompt", "x"]) == 2
    assert "no tokenizer" in capsys.readouterr().err


def test_presets_in_configs_are_valid():
    import pathlib

    import yaml
    presets = sorted(pathlib.Path(__file__).parent.parent.glob("configs/generate/*.yaml"))
    assert presets
    model = sdjax.models.family_config("gpt2", vocab_size=8, hidden_size=8, num_layers=1,
                              num_heads=1, num_kv_heads=1, head_dim=8, intermediate_size=8,
                              max_position_embeddings=8)
    for preset in presets:
        sdjax.from_dict(sdjax.SpecConfig, {"model": model, **yaml.safe_load(preset.read_text())})


def test_run_flags_override_the_training_config(tmp_path):
    """--steps, --output and --seed reach the config of every `sdjax train` kind (the
    run itself: the slow end-to-end test)."""
    from sdjax.training.heads import load_config

    path = tmp_path / "heads.yaml"
    path.write_text("target: t\noutput: run\nseed: 1\nsteps: 10\n")
    for argv, expected in ((["--seed", "4", "--steps", "20", "--output", "there"],
                            dict(seed=4, steps=20, output="there")),
                           ([], dict(seed=1, steps=10, output=str(tmp_path / "run")))):
        args = cli.build_parser().parse_args(["train", "heads", "--config", str(path), *argv])
        cfg = load_config(args.config, **cli._run_overrides(args))
        assert {name: getattr(cfg, name) for name in expected} == expected


def test_training_presets_are_valid():
    import pathlib

    from sdjax.training.acceptance import AcceptanceTrainConfig
    from sdjax.training.distill import DistillConfig
    from sdjax.training.heads import HeadsTrainConfig
    from sdjax.training.lm import LMTrainConfig
    from sdjax.training.loop import load_yaml_config
    presets = sorted(pathlib.Path(__file__).parent.parent.glob("configs/train/*.yaml"))
    kinds = set()
    for preset in presets:
        values = yaml.safe_load(preset.read_text())
        cls = (HeadsTrainConfig if "kind" in values else DistillConfig if "divergence" in values
               else AcceptanceTrainConfig if "num_blocks" in values else LMTrainConfig)
        cfg = load_yaml_config(cls, str(preset))
        kinds.add(getattr(cfg, "kind", cls.__name__))
    assert kinds == {"LMTrainConfig", "medusa", "hydra", "mlp_speculator", "redrafter", "eagle",
                     "eagle3", "kangaroo", "DistillConfig", "AcceptanceTrainConfig"}


def test_demo_runs_end_to_end(capsys):
    assert cli.main(["demo", "--model", "testbed", "--max-new-tokens", "8", "--method",
                     "prompt_lookup", "eagle2"]) == 0
    out = capsys.readouterr().out
    assert "--- completion (8 tokens, greedy) ---" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[-3:]}
    assert set(rows) == {"autoregressive", "prompt_lookup", "eagle2"}
    assert all(row[-1] == "True" for row in rows.values())  # lossless


def test_demo_rejects_unknown_methods(capsys):
    assert cli.main(["demo", "--model", "testbed", "--method", "eagle9"]) == 2
    assert "unknown methods ['eagle9']" in capsys.readouterr().err


def test_help_of_every_command(capsys):
    """`python -m sdjax.cli --help` in a process of its own; every command's in this one."""
    result = subprocess.run([sys.executable, "-m", "sdjax.cli", "--help"],
                            capture_output=True, text=True, check=True)
    assert "usage: sdjax" in result.stdout
    for command in (["generate"], ["demo"], ["bench"], ["convert"], ["train", "lm"],
                    ["train", "heads"], ["train", "generations"], ["train", "distill"],
                    ["train", "acceptance"], ["datastore", "build"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*command, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: sdjax {' '.join(command)}" in capsys.readouterr().out


@pytest.mark.parametrize("flags", [["--prompt-lookup", "4"],
                                   ["--draft-model", "SELF", "--gamma", "3"],
                                   # another tokenizer's draft: CrossVocabDraft
                                   ["--draft-model", "OTHER", "--gamma", "3"],
                                   ["--exit-layer", "1", "--gamma", "3"],
                                   ["--lookahead"], ["--lookahead", "context"]])
def test_speculative_flags_give_the_same_greedy_tokens(checkpoint, capsys, flags):
    from sdjax import testbed
    common = ["generate", "--model", checkpoint, "--prompt", "def f(x):\n    return x",
              "--max-new-tokens", "12", "--eos-token-id", "--json"]
    assert cli.main(common) == 0
    plain = json.loads(capsys.readouterr().out)
    folders = {"SELF": checkpoint, "OTHER": testbed.path("draft")}
    assert cli.main(common + [folders.get(f, f) for f in flags]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["tokens"] == plain["tokens"]
    if "SELF" in flags:
        assert spec["tau"] == 4.0  # the target as its own draft: every draft accepted


def test_a_draft_folder_with_a_reduced_vocabulary_drafts_over_it(checkpoint, tmp_path, capsys):
    """`--draft-model` reads a folder's draft_vocab.safetensors (`save_draft_model`): the
    target as its own draft over the ids its greedy text uses, and over half of them."""
    import numpy as np

    from sdjax.drafters.draft_model import save_draft_model

    model = sdjax.load_hf(checkpoint)
    common = ["generate", "--model", checkpoint, "--prompt", "def f(x):\n    return x",
              "--max-new-tokens", "12", "--eos-token-id", "--json"]
    assert cli.main(common) == 0
    plain = json.loads(capsys.readouterr().out)
    used = np.unique(plain["tokens"][0])
    taus = []
    for name, ids in (("all", used), ("half", used[::2])):
        save_draft_model(str(tmp_path / name), model.config,
                         {**model.params, "vocab_ids": ids}, model.tokenizer)
        assert cli.main(common + ["--draft-model", str(tmp_path / name), "--gamma", "3"]) == 0
        spec = json.loads(capsys.readouterr().out)
        assert spec["tokens"] == plain["tokens"]
        taus.append(spec["tau"])
    assert taus[0] == 4.0 and taus[1] < 4.0


@pytest.mark.parametrize("flags,message", [
    (["--exit-layer", "2"], "--exit-layer 2: the model has 1 layers"),
    (["--skip-layers", "3"], "--skip-layers [3]: the model has layers 0..0"),
    (["--skip-layers", "0"], "--skip-layers would skip every layer"),
    (["--draft-vocab", "8"], "--draft-vocab needs --exit-layer, --skip-layers or --lookahead"),
    (["--exit-layer", "1", "--skip-layers", "0"], "choose one of"),
    (["--lookahead", "--prompt-lookup", "2"], "choose one of"),
    (["--stop-head", "HEAD"], "--stop-head needs --draft-model"),
    (["--stop-threshold", "0.3"], "--stop-threshold needs --stop-head"),
])
def test_self_speculation_flags_are_checked(checkpoint, capsys, flags, message):
    assert cli.main(["generate", "--model", checkpoint, "--prompt", "x", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_a_stop_head_is_refused_for_a_draft_of_another_tokenizer(checkpoint, capsys):
    from sdjax import testbed
    assert cli.main(["generate", "--model", checkpoint, "--prompt", "x", "--draft-model",
                     testbed.path("draft"), "--stop-head", "HEAD"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--stop-head needs a draft that shares" in err, err


def test_datastore_build_then_generate_with_rest(checkpoint, tmp_path, capsys):
    """`sdjax datastore build` on the user's own text, then `generate --datastore`: the
    greedy tokens of plain decoding; a datastore of another tokenizer is refused."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.py").write_text("def f(x):\n    return x + 1\n" * 20)
    (corpus / "skip.bin").write_bytes(b"\x00\xff" * 10)  # not a text ending: not read
    store = str(tmp_path / "ds")
    assert cli.main(["datastore", "build", "--model", checkpoint, "--corpus", str(corpus),
                     "--depth", "8", "--out", store]) == 0
    assert "1 texts, suffixes sorted by 8 tokens" in capsys.readouterr().out
    common = ["generate", "--model", checkpoint, "--prompt", "def f(x):\n    return x",
              "--max-new-tokens", "12", "--eos-token-id", "--json"]
    assert cli.main(common) == 0
    plain = json.loads(capsys.readouterr().out)
    # A depth-8 datastore: the CLI's REST searches suffixes of up to 8 tokens.
    assert cli.main(common + ["--datastore", store]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == plain["tokens"]
    assert cli.main(["datastore", "build", "--model", checkpoint, "--corpus", str(corpus),
                     "--out", store]) == 0
    capsys.readouterr()
    for context in ("0", "2"):
        assert cli.main(common + ["--datastore", store, "--rest-context", context]) == 0
        assert json.loads(capsys.readouterr().out)["tokens"] == plain["tokens"]
    assert cli.main(common + ["--rest-context", "1"]) == 2
    assert "--rest-context needs --datastore" in capsys.readouterr().err
    assert cli.main(common + ["--datastore", store, "--rest-context", "-1"]) == 2
    assert "context >= 0" in capsys.readouterr().err
    assert cli.main(["generate", "--model", "testbed", "--prompt", "x",
                     "--datastore", store]) == 2
    assert "was built with another tokenizer" in capsys.readouterr().err
    for argv, message in [(["--corpus", str(tmp_path / "nothing")], "is not one of"),
                          (["--corpus", str(tmp_path / "ds")], "no .py/.md/.txt/.rst files"),
                          (["--depth", "0"], None)]:
        try:
            code = cli.main(["datastore", "build", "--model", checkpoint, "--out",
                             str(tmp_path / "x"), *argv])
        except SystemExit as exit:  # argparse's own refusal
            code = exit.code
        assert code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and (message is None or message in err), err


def test_only_one_drafter_at_a_time(checkpoint, capsys):
    assert cli.main(["generate", "--model", checkpoint, "--prompt", "x", "--prompt-lookup", "2",
                     "--draft-model", checkpoint]) == 2
    assert "choose one" in capsys.readouterr().err


def test_generate_with_draft_heads_gives_the_same_greedy_tokens(checkpoint, tmp_path, capsys):
    from sdjax.heads import HeadsConfig, eagle_config, init_eagle, init_heads, save_heads

    model = sdjax.load_hf(checkpoint)
    for kind in ("medusa", "hydra"):
        cfg = HeadsConfig(num_heads=3, hidden_size=model.config.hidden_size,
                          vocab_size=model.config.vocab_size, kind=kind)
        save_heads(str(tmp_path / kind), cfg, init_heads(cfg, model.params,
                                                         jax.random.PRNGKey(0)))
    eagle = eagle_config(model.config)
    save_heads(str(tmp_path / "eagle"), eagle, init_eagle(eagle, model.params,
                                                          jax.random.PRNGKey(0)))
    common = ["generate", "--model", checkpoint, "--prompt", "def f(x):\n    return x",
              "--max-new-tokens", "12", "--eos-token-id", "--json"]
    assert cli.main(common) == 0
    plain = json.loads(capsys.readouterr().out)
    for kind in ("medusa", "hydra", "eagle"):
        assert cli.main(common + ["--heads", str(tmp_path / kind)]) == 0
        assert json.loads(capsys.readouterr().out)["tokens"] == plain["tokens"]
    assert cli.main(common + ["--heads", str(tmp_path / "medusa"), "--prompt-lookup", "3"]) == 2
    assert "choose one of" in capsys.readouterr().err
    assert cli.main(common + ["--heads", "eagle3"]) == 2  # a folder model ships no drafts
    assert "heads 'eagle3': not a folder; no drafts are shipped for" in capsys.readouterr().err


def test_heads_by_kind_name_are_the_drafts_shipped_for_the_named_model(capsys):
    from sdjax import testbed
    from sdjax.pretrained import heads_folder, shipped_drafts

    assert shipped_drafts("testbed") == {kind: testbed.path(kind) for kind in testbed.HEADS}
    assert heads_folder("hydra", "testbed") == testbed.path("hydra")
    common = ["generate", "--model", "testbed", "--prompt", "import os\nimport sys\n",
              "--max-new-tokens", "12", "--eos-token-id", "--json"]
    assert cli.main(common) == 0
    plain = json.loads(capsys.readouterr().out)
    for kind in ("hydra", "kangaroo"):
        assert cli.main(common + ["--heads", kind]) == 0
        assert json.loads(capsys.readouterr().out)["tokens"] == plain["tokens"]
    assert cli.main(common + ["--heads", "eagle9"]) == 2
    assert ("shipped for testbed: medusa, hydra, mlp_speculator, redrafter, eagle, eagle3, "
            "kangaroo") in capsys.readouterr().err


@pytest.mark.slow  # 2 min: encodes the whole stdlib three times; the pieces have fast tests
def test_train_lm_then_heads_commands_run_end_to_end(tmp_path, capsys):
    """`sdjax train lm` (tokenizer, corpus, training, export), `sdjax train heads` on its
    export, then `train generations` and an EAGLE draft trained on them, with tiny
    settings; the exports load and decode together."""
    lm_config = tmp_path / "lm.yaml"
    lm_config.write_text(yaml.safe_dump(dict(
        model=dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                   intermediate_size=64, tie_embeddings=True),
        output=str(tmp_path / "lm"), vocab_size=300, seq_len=32, batch_size=4, steps=2,
        eval_every=2, eval_batches=1, checkpoint_every=2, warmup_steps=1, data_parallel=1)))
    assert cli.main(["train", "lm", "--config", str(lm_config)]) == 0
    # Resuming under another seed would be another run: one line, status 2.
    capsys.readouterr()
    assert cli.main(["train", "lm", "--config", str(lm_config), "--steps", "3",
                     "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other settings (seed: 0 -> 5)" in err, err
    _train_heads_then_generate(tmp_path, capsys, "heads", kind="hydra", num_heads=2,
                               seq_len=32, batch_size=4)
    assert cli.main(["train", "generations", "--target", str(tmp_path / "lm" / "hf"),
                     "--output", str(tmp_path / "generations"), "--prompts", "4",
                     "--prompt-len", "16", "--new-tokens", "8", "--batch-size", "2"]) == 0
    _train_heads_then_generate(tmp_path, capsys, "eagle", kind="eagle", seq_len=16,
                               batch_size=2, generations=str(tmp_path / "generations"))


def _train_heads_then_generate(tmp_path, capsys, name, **config):
    """`sdjax train heads` (tiny settings) on the trained lm, then `generate --heads`."""
    target = str(tmp_path / "lm" / "hf")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dict(
        target=target, output=str(tmp_path / name), steps=2, eval_every=2, eval_batches=1,
        checkpoint_every=2, warmup_steps=1, data_parallel=1, **config)))
    assert cli.main(["train", "heads", "--config", str(path)]) == 0
    assert "exported" in capsys.readouterr().out
    assert cli.main(["generate", "--model", target, "--prompt", "def f(", "--heads",
                     str(tmp_path / name / "heads"), "--max-new-tokens", "5",
                     "--eos-token-id", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["tokens"][0]) == 5


def test_train_distill_then_acceptance_then_generate_with_the_stop_head(tmp_path, capsys):
    """`sdjax train generations` and `sdjax train distill` on them (Seq-KD) for the testbed
    pair, `sdjax train acceptance` for the distilled draft, `sdjax train heads` for the
    target, then `generate --draft-model --stop-head`: plain greedy tokens. The runs' corpus
    caches are seeded with one module (the commands reuse them)."""
    import numpy as np

    from sdjax import data, testbed
    from tests.hf_models import stdlib_source

    target = testbed.path("target")
    stream = data.encode_corpus(sdjax.load_hf(target).tokenizer, [stdlib_source("textwrap")])
    common = dict(target=target, steps=2, seq_len=48, prompt_len=16, batch_size=2,
                  eval_every=2, eval_batches=1, checkpoint_every=2, warmup_steps=1,
                  data_parallel=1)
    runs = {"distill": dict(draft=testbed.path("draft"), on_policy=0.5,
                            generations=str(tmp_path / "generations")),  # Seq-KD
            "acceptance": dict(draft=str(tmp_path / "distill" / "hf"))}
    for name in ("generations", "heads", *runs):
        (tmp_path / name / "data").mkdir(parents=True)
        for split in ("train", "validation"):
            np.save(tmp_path / name / "data" / f"stdlib-{split}.npy", stream)
    for name, values in runs.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(
            dict(common, output=str(tmp_path / name), **values)))
    assert cli.main(["train", "generations", "--target", target, "--output",
                     str(tmp_path / "generations"), "--prompts", "4", "--prompt-len", "16",
                     "--new-tokens", "40", "--batch-size", "4"]) == 0
    assert cli.main(["train", "distill", "--config", str(tmp_path / "distill.yaml"),
                     "--divergence", "tvd"]) == 0
    assert "the draft before distillation: eval_loss" in capsys.readouterr().out
    assert cli.main(["train", "acceptance", "--config", str(tmp_path / "acceptance.yaml")]) == 0
    capsys.readouterr()
    # Heads training logs and records its start beside its end.
    heads = {k: v for k, v in common.items() if k != "prompt_len"}
    (tmp_path / "heads.yaml").write_text(yaml.safe_dump(
        dict(heads, output=str(tmp_path / "heads"), kind="medusa", num_heads=2)))
    assert cli.main(["train", "heads", "--config", str(tmp_path / "heads.yaml")]) == 0
    assert "the heads before training: eval_loss" in capsys.readouterr().out
    summary = json.loads((tmp_path / "heads" / "summary.json").read_text())
    assert summary["before"]["eval_top1_head0"] >= 0 and summary["eval_loss"] > 0
    common = ["generate", "--model", target, "--prompt", "def f(x):\n    return",
              "--max-new-tokens", "16", "--json"]
    assert cli.main(common) == 0
    plain = json.loads(capsys.readouterr().out)
    assert cli.main(common + ["--draft-model", str(tmp_path / "distill" / "hf"), "--gamma", "6",
                              "--stop-head", str(tmp_path / "acceptance" / "acceptance_head"),
                              "--stop-threshold", "0.8"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == plain["tokens"]
