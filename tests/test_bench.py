"""`sdjax bench` on tiny random-weight checkpoints: a well-formed report, end to end."""

import json
import os

import jax
import pytest

import sdjax
from sdjax import testbed
from sdjax.bench.common import machine
from sdjax.cli import main
from sdjax.drafters.acceptance import (
    AcceptanceHeadConfig,
    init_acceptance_head,
    save_acceptance_head,
)
from sdjax.training.lm import model_config

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tokenizer_dir):
    tokenizer = sdjax.data.load_tokenizer(tokenizer_dir)
    root = tmp_path_factory.mktemp("pair")
    sizes = {"target": dict(hidden_size=64, num_layers=2, intermediate_size=128),
             "draft": dict(hidden_size=32, num_layers=1, intermediate_size=64)}
    for seed, (name, size) in enumerate(sizes.items()):
        cfg = model_config(dict(num_heads=4, num_kv_heads=2, head_dim=16, **size),
                           len(tokenizer), tokenizer.eos_token_id)
        sdjax.save_hf(str(root / name), cfg, sdjax.init_params(cfg, jax.random.PRNGKey(seed)),
                      tokenizer)
    return str(root / "target"), str(root / "draft")


def test_bench_writes_a_well_formed_report(pair, tmp_path, capsys):
    target, draft = pair
    out = tmp_path / "report"
    head = AcceptanceHeadConfig(32)  # the draft's hidden size; a random SpecDec++ head
    save_acceptance_head(str(tmp_path / "head"), head, init_acceptance_head(head,
                                                                            jax.random.key(0)))
    code = main(["bench", "--target", target, "--draft", draft, "--prompts", "1",
                 "--new-tokens", "6", "--repeats", "1", "--categories", "completion",
                 "copy_edit", "--vs-transformers", "--out", str(out), "--methods",
                 "autoregressive", "prompt_lookup", "draft_chain", "draft_stop_head",
                 "cross_vocab", "--stop-head",
                 str(tmp_path / "head"), "--cross-draft", testbed.path("draft")])
    # test_bench_runs_rest_from_a_datastore runs the default set (no draft); the other
    # draft-model methods (draft_adaptive, draft_tree) are other drafters through the
    # same rows and are left out for time
    assert code == 0
    assert sorted(os.listdir(out)) == ["acceptance.png", "results.json", "results.md",
                                       "speedup.png"]
    report = json.loads((out / "results.json").read_text())
    methods = ["autoregressive", "prompt_lookup", "draft_chain", "draft_stop_head",
               "cross_vocab"]
    assert [(r["category"], r["method"]) for r in report["rows"]] == [
        (c, m) for c in ("completion", "copy_edit") for m in methods]
    for row in report["rows"]:
        assert row["same_as_greedy"] is True, row  # every method is lossless
        assert row["tokens_per_second"] > 0 and row["memory_mb"] > 0
        baseline = next(r for r in report["rows"] if r["category"] == row["category"]
                        and r["method"] == "autoregressive")
        assert row["speedup"] == pytest.approx(row["tokens_per_second"]
                                               / baseline["tokens_per_second"])
        # tau: at most the deepest draft + 1 (the bench's gamma and lookup are 4)
        assert 1.0 <= row["tau"] <= {"autoregressive": 1, "draft_stop_head": 9}.get(
            row["method"], 5)
        if row["method"] == "autoregressive":
            assert row["acceptance_by_depth"] == []
            assert row["predicted_speedup"] == 1.0 and row["draft_ms"] == 0.0
        else:  # tau x one step / (the tree's verify forward + one draft), from measured costs
            assert row["draft_ms"] > 0 and row["verify_ms"] > 0
            assert row["predicted_speedup"] == pytest.approx(
                row["tau"] * row["ar_ms"] / (row["verify_ms"] + row["draft_ms"]))
        if row["method"] in ("autoregressive", "draft_chain", "prompt_lookup", "cross_vocab"):
            assert row["vs_transformers"] > 0
            assert row["transformers_same_as_greedy"] is True
        # transformers' greedy ran in both dtypes; every row is set against the faster
        greedy = report["transformers_greedy"][row["category"]]
        assert sorted(greedy) == ["bfloat16", "float32"]
        assert row["vs_transformers_fastest_greedy"] == pytest.approx(
            row["tokens_per_second"] / max(greedy.values()))
        if row["method"] == "autoregressive":
            assert row["tokens_per_second"] / row["vs_transformers"] == pytest.approx(
                greedy["float32"])  # the report's own dtype is the plain comparison
    assert set(report["transformers_other_dtype_same"]) == {"completion", "copy_edit"}
    table = (out / "results.md").read_text().splitlines()
    assert table[0] == f"{machine()}, float32 target" == f"{report['machine']}, float32 target"
    assert table[2].startswith("transformers' greedy, tokens/s: completion float32 ")
    assert len(table) == 6 + len(report["rows"])
    assert "transformers tok/s" in table[4] and "measured / predicted" in table[4]
    assert "fastest greedy" in table[4]
    assert "results.json" in capsys.readouterr().out


def test_the_machine_line_names_the_cpu_and_the_instructions_it_lacks(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    processor = "model name\t: Some CPU\nflags\t\t: fpu avx avx2 avx512f\n"
    cpuinfo.write_text(f"processor\t: 0\n{processor}\nprocessor\t: 1\n{processor}")
    line = machine(str(cpuinfo))
    assert line.startswith("Some CPU, ")
    assert " cores, avx2 avx512f (no avx512_bf16, amx_bf16); jax " in line
    cpuinfo.write_text("model name\t: Old CPU\nflags\t\t: fpu sse2\n")
    assert "none of avx2 avx512f avx512_bf16 amx_bf16; jax" in machine(str(cpuinfo))


def test_bench_rejects_unknown_methods_and_heads_it_lacks(pair, tmp_path, capsys):
    target, draft = pair
    assert main(["bench", "--target", target, "--draft", draft,
                 "--methods", "eagle9", "--out", str(tmp_path)]) == 2
    assert "unknown methods ['eagle9']" in capsys.readouterr().err
    # Another target than the bundled one gets no bundled heads: Medusa needs --heads.
    assert main(["bench", "--target", target, "--draft", draft, "--prompts", "1",
                 "--categories", "completion", "--methods", "medusa",
                 "--out", str(tmp_path)]) == 2
    assert "need draft heads" in capsys.readouterr().err


@pytest.mark.slow  # 34 s; the default run keeps the well-formed report and REST's methods
def test_bench_runs_the_eagle_methods_of_an_eagle_draft(pair, tmp_path):
    from sdjax.heads import eagle_config, init_eagle, save_heads

    target, draft = pair
    model = sdjax.load_hf(target)
    eagle = eagle_config(model.config)
    save_heads(str(tmp_path / "eagle"), eagle, init_eagle(eagle, model.params,
                                                          jax.random.PRNGKey(0)))
    out = tmp_path / "report"
    assert main(["bench", "--target", target, "--draft", draft, "--heads",
                 str(tmp_path / "eagle"), "--prompts", "1", "--new-tokens", "6", "--repeats",
                 "1", "--categories", "completion", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    methods = [r["method"] for r in rows]
    assert {"eagle", "eagle2", "eagle2_adaptive"} <= set(methods) and "medusa" not in methods
    assert all(r["same_as_greedy"] for r in rows)


def test_bench_runs_rest_from_a_datastore(pair, tokenizer_dir, tmp_path):
    from sdjax.data.corpus import read_split
    from sdjax.drafters.datastore import write_datastore

    target, _ = pair
    tokenizer = sdjax.data.load_tokenizer(tokenizer_dir)
    store = str(tmp_path / "ds")
    write_datastore(store, tokenizer, read_split("train")[:40])
    out = tmp_path / "report"
    assert main(["bench", "--target", target, "--datastore", store, "--prompts", "1",
                 "--new-tokens", "6", "--repeats", "1", "--categories", "completion",
                 "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["autoregressive", "prompt_lookup", "rest",
                                           "rest_context", "lookahead", "lookahead_context"]
    assert all(r["same_as_greedy"] for r in rows)


def test_bench_runs_self_speculation(pair, tmp_path):
    """early_exit (default: all layers but the last) and a calibrated layer_skip; with
    a 300-token vocabulary no reduced exit head is built."""
    target, _ = pair
    out = tmp_path / "report"
    assert main(["bench", "--target", target, "--methods", "early_exit", "layer_skip",
                 "--prompts", "1", "--new-tokens", "6", "--repeats", "1", "--categories",
                 "completion", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["autoregressive", "early_exit", "layer_skip"]
    assert all(r["same_as_greedy"] and r["draft_ms"] > 0 for r in rows[1:])


def test_ar_bench_times_both_dtypes_and_checks_tokens(tmp_path):
    from sdjax.bench import ar
    result = ar.main(["--layers", "1", "--hidden", "64", "--intermediate", "128", "--heads",
                      "4", "--kv-heads", "4", "--vocab", "256", "--new-tokens", "8",
                      "--repeats", "1", "--prompt-len", "16", "--batch", "2",
                      "--json", str(tmp_path / "ar.json")])
    assert result["same_tokens_as_transformers_float32"]["sdjax float32"]
    assert set(result["tokens_per_second"]) == {
        f"{impl} {dtype}" for impl in ("sdjax", "transformers")
        for dtype in ("float32", "bfloat16")}
    # Weights a step reads, counted by hand: q/k/v/o 4 * 64 * 64, MLP 3 * 64 * 128, two
    # layer norms and the final one (3 * 64), the LM head 64 * 256, one embedding row.
    weights = 4 * 64 * 64 + 3 * 64 * 128 + 3 * 64 + 64 * 256 + 64
    for dtype, size in (("float32", 4), ("bfloat16", 2)):
        assert result["weight_streaming_limit_ms"][dtype] == pytest.approx(
            1e3 * weights * size / (result["bandwidth_gb_per_s"] * 1e9))
    assert set(result["forward_ms_by_new_tokens"]["float32"]) == set(ar.VERIFY_SIZES)


@pytest.mark.slow
def test_cost_split_times_every_bundled_method():
    from sdjax.bench import cost

    report = cost.main(["--repeats", "1", "--new-tokens", "8", "--context", "64"])
    assert all(report[kind] > 0 for kind in ("medusa", "hydra", "mlp_speculator", "redrafter"))
    methods = {"autoregressive", "draft_chain", "draft_tree", "medusa", "hydra",
               "mlp_speculator", "redrafter", "eagle", "eagle2", "eagle3", "kangaroo"}
    assert methods <= set(report["cycles"])
    assert all(report["cycles"][m]["verify"] > 0 for m in methods)


def test_costs_are_timed_in_turns():
    """Every round calls each timer once, so a slow spell of the machine falls on all
    the costs alike; each cost is the median of its own calls."""
    from sdjax.bench.cost import interleaved_medians

    calls = []

    def fake(name, times):
        def once():
            calls.append(name)
            return times[calls.count(name) - 1]
        return once

    medians = interleaved_medians({"ar": fake("ar", [1.0, 5.0, 3.0]),
                                   "verify": fake("verify", [2.0, 2.0, 9.0])}, 3)
    assert calls == ["ar", "verify"] * 3
    assert medians == {"ar": 3.0, "verify": 2.0}
