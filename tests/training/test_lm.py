"""Language-model training: loss goes down, resume is exact, sharding agrees, export loads."""

import os

import jax
import numpy as np
import pytest

from sdjax import load_hf
from sdjax.models.transformer import init_params, sequence_forward
from sdjax.training import lm, loop
from tests.training.conftest import TINY_MODEL

MODEL = TINY_MODEL


def _config(tmp_path, **changes):
    values = dict(model=MODEL, output=str(tmp_path), seq_len=32, batch_size=8, steps=6,
                  learning_rate=1e-2, warmup_steps=2, eval_every=3, eval_batches=2,
                  checkpoint_every=3, data_parallel=1)
    return lm.LMTrainConfig(**{**values, **changes})


def _model(tokenizer):
    return lm.model_config(MODEL, len(tokenizer), tokenizer.eos_token_id)


def test_batches_are_a_function_of_seed_and_step():
    stream = np.arange(1000, dtype=np.uint16)
    a = loop.batch_at(stream, 5, 4, 16, seed=0)
    assert a.shape == (4, 17) and a.dtype == np.int32
    np.testing.assert_array_equal(a, loop.batch_at(stream, 5, 4, 16, seed=0))
    assert not np.array_equal(a, loop.batch_at(stream, 6, 4, 16, seed=0))
    np.testing.assert_array_equal(np.diff(a, axis=1), 1)  # contiguous windows
    with pytest.raises(ValueError, match="too short"):
        loop.batch_at(stream[:10], 0, 4, 16, seed=0)


def test_a_few_steps_lower_the_loss(corpus, tmp_path):
    tokenizer, train, val = corpus
    cfg = _config(tmp_path, steps=30, eval_every=10, checkpoint_every=30)
    result = lm.train_lm(cfg, _model(tokenizer), train, val, progress=False)
    losses = [row["eval_loss"] for row in result.history]
    assert result.step == 30 and len(losses) == 3
    windows = loop.eval_windows(val, cfg.eval_batches * cfg.batch_size, cfg.seq_len)
    untrained = float(lm.lm_loss(init_params(_model(tokenizer), jax.random.PRNGKey(0)),
                                 _model(tokenizer), windows))
    assert abs(untrained - np.log(len(tokenizer))) < 0.1  # uniform at initialisation
    assert losses[-1] < untrained - 1.0, (untrained, losses)
    assert losses == sorted(losses, reverse=True)


def test_resume_reproduces_the_uninterrupted_run(corpus, tmp_path):
    tokenizer, train, val = corpus
    model = _model(tokenizer)
    whole = lm.train_lm(_config(tmp_path / "whole"), model, train, val, progress=False)
    cfg = _config(tmp_path / "split")
    first = lm.train_lm(cfg, model, train, val, stop_at=3, progress=False)
    assert first.step == 3
    resumed = lm.train_lm(cfg, model, train, val, progress=False)
    assert resumed.step == 6
    jax.tree.map(np.testing.assert_array_equal, whole.params, resumed.params)
    assert resumed.history[-1]["eval_loss"] == whole.history[-1]["eval_loss"]


def test_a_resume_under_other_settings_is_refused(corpus, tmp_path):
    """Another seed or learning rate would silently train another run; more steps or
    another reporting cadence are a resume; a stop before the resumed step is refused
    (it would export a later step than asked for)."""
    from sdjax.training.checkpoints import CheckpointError

    tokenizer, train, val = corpus
    model = _model(tokenizer)
    lm.train_lm(_config(tmp_path), model, train, val, stop_at=3, progress=False)
    for changes, said in (({"seed": 1}, "seed: 0 -> 1"),
                          ({"learning_rate": 2e-2}, "learning_rate: 0.01 -> 0.02")):
        with pytest.raises(CheckpointError, match=f"other settings \\({said}\\)"):
            lm.train_lm(_config(tmp_path, **changes), model, train, val, progress=False)
    with pytest.raises(CheckpointError, match="stop_at=2 is before step 3, where the run"):
        lm.train_lm(_config(tmp_path), model, train, val, stop_at=2, progress=False)
    longer = _config(tmp_path, steps=9, eval_every=9, checkpoint_every=9)
    assert lm.train_lm(longer, model, train, val, progress=False).step == 9


def _damage(step_dir, kind: str) -> None:
    """Damages one orbax checkpoint the way a crash or a bad disk would."""
    data_files = [os.path.join(root, f) for root, _, files in os.walk(step_dir)
                  for f in files if os.sep + "d" + os.sep in os.path.join(root, f)]
    largest = max(data_files, key=os.path.getsize)
    if kind == "truncate":
        with open(largest, "r+b") as f:
            f.truncate(os.path.getsize(largest) // 2)
    elif kind == "corrupt":  # orbax itself restores these bytes without complaint
        with open(largest, "r+b") as f:
            f.seek(os.path.getsize(largest) // 2)
            chunk = f.read(32)
            f.seek(os.path.getsize(largest) // 2)
            f.write(bytes(b ^ 0xFF for b in chunk))
    else:
        os.remove(os.path.join(step_dir, "default", "manifest.ocdbt"))


@pytest.fixture(scope="module")
def undamaged_run(corpus, tmp_path_factory):
    """The 9-step run every damaged one must end equal to."""
    tokenizer, train, val = corpus
    return lm.train_lm(_config(tmp_path_factory.mktemp("whole"), steps=9), _model(tokenizer),
                       train, val, progress=False)


# One damage in the default run; the digests catch the others the same way.
@pytest.mark.parametrize("kind", [pytest.param("truncate", marks=pytest.mark.slow), "corrupt",
                                  pytest.param("manifest", marks=pytest.mark.slow)])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(corpus, tmp_path, kind,
                                                                      undamaged_run):
    from sdjax.training.checkpoints import CheckpointWarning

    tokenizer, train, val = corpus
    model = _model(tokenizer)
    cfg = _config(tmp_path / "split", steps=9)
    lm.train_lm(cfg, model, train, val, stop_at=6, progress=False)  # checkpoints 3 and 6
    _damage(tmp_path / "split" / "checkpoints" / "6", kind)
    with pytest.warns(CheckpointWarning, match="step 6 .*resuming from step 3"):
        resumed = lm.train_lm(cfg, model, train, val, progress=False)
    assert resumed.step == 9
    jax.tree.map(np.testing.assert_array_equal, undamaged_run.params, resumed.params)
    if kind == "corrupt":  # the skipped step was written again: it is a sound fallback now
        _damage(tmp_path / "split" / "checkpoints" / "9", kind)
        with pytest.warns(CheckpointWarning, match="step 9 .*resuming from step 6"):
            again = lm.train_lm(cfg, model, train, val, progress=False)
        jax.tree.map(np.testing.assert_array_equal, undamaged_run.params, again.params)


def test_no_intact_checkpoint_or_another_model_is_a_clear_error(corpus, tmp_path):
    from sdjax.training.checkpoints import CheckpointError

    tokenizer, train, val = corpus
    model = _model(tokenizer)
    cfg = _config(tmp_path, steps=9)
    lm.train_lm(cfg, model, train, val, stop_at=6, progress=False)
    for step in (3, 6):
        _damage(tmp_path / "checkpoints" / str(step), "corrupt")
    with pytest.raises(CheckpointError, match="no intact checkpoint in .*remove it"):
        lm.train_lm(cfg, model, train, val, progress=False)
    wider = lm.model_config({**MODEL, "hidden_size": 64}, len(tokenizer),
                            tokenizer.eos_token_id)
    with pytest.raises(CheckpointError, match="holds a run of a different model"):
        lm.train_lm(cfg, wider, train, val, progress=False)
    # A folder whose run stopped before its first checkpoint holds nothing to protect.
    fresh = _config(tmp_path / "fresh", steps=2, checkpoint_every=2, eval_every=2)
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "run.json").write_text('{"params": {}}')
    assert lm.train_lm(fresh, wider, train, val, progress=False).step == 2


def test_config_paths_are_relative_to_the_config_file(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "run.yaml").write_text("model: {hidden_size: 32, num_layers: 1, num_heads: 2, "
                                     "num_kv_heads: 2, head_dim: 16, intermediate_size: 64}\n"
                                     "output: ../runs/x\ntokenizer: tok\nlearning_rate: 1e-3\n")
    cfg = lm.load_config(str(folder / "run.yaml"), steps=5)
    assert cfg.output == str(tmp_path / "runs" / "x")
    assert cfg.tokenizer == str(folder / "tok")
    assert cfg.learning_rate == 1e-3 and cfg.steps == 5
    assert lm.load_config(str(folder / "run.yaml"), output="here").output == "here"


@pytest.mark.parametrize("section,message", [
    ("{hiden_size: 32}", "unknown ModelConfig key(s) ['hiden_size']"),
    ("{vocab_size: 99, hidden_size: 32}", "['vocab_size'] come from the tokenizer"),
    ("{hidden_size: '32', num_layers: 1, num_heads: 2, num_kv_heads: 2, head_dim: 16, "
     "intermediate_size: 64}", "hidden_size must be int"),
])
def test_a_typo_in_the_model_section_is_refused_when_the_config_is_read(tmp_path, section,
                                                                          message):
    path = tmp_path / "run.yaml"
    path.write_text(f"model: {section}\noutput: run\n")
    with pytest.raises((ValueError, TypeError)) as raised:
        lm.load_config(str(path))
    assert message in str(raised.value)
    assert not (tmp_path / "run").exists()  # before any data preparation


def test_sharded_training_matches_one_device(corpus, tmp_path):
    tokenizer, train, val = corpus
    model = _model(tokenizer)
    one = lm.train_lm(_config(tmp_path / "one"), model, train, val, progress=False)
    for data_parallel, model_parallel in ((8, 1), (4, 2)):
        cfg = _config(tmp_path / f"{data_parallel}x{model_parallel}",
                      data_parallel=data_parallel, model_parallel=model_parallel)
        sharded = lm.train_lm(cfg, model, train, val, progress=False)
        assert len(one.history) == len(sharded.history) == 2
        for a, b in zip(one.history, sharded.history):
            np.testing.assert_allclose(a["loss"], b["loss"], rtol=2e-4)
            np.testing.assert_allclose(a["eval_loss"], b["eval_loss"], rtol=2e-4)


def test_batch_must_divide_over_data_devices(corpus, tmp_path):
    tokenizer, train, val = corpus
    with pytest.raises(ValueError, match="multiple of"):
        lm.train_lm(_config(tmp_path, batch_size=6, data_parallel=4), _model(tokenizer),
                    train, val, progress=False)


def test_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lm.load_config(str(tmp_path / "missing.yaml"))
    path = tmp_path / "bad.yaml"
    path.write_text("model: {}\noutput: x\nlearning_rat: 1\n")
    with pytest.raises(ValueError, match="learning_rat"):
        lm.load_config(str(path))


def test_export_loads_in_transformers_with_matching_logits(corpus, tmp_path):
    torch = pytest.importorskip("torch")
    import transformers

    tokenizer, train, val = corpus
    cfg = _config(tmp_path, steps=3, export_dtype="float32")
    result = lm.train_lm(cfg, _model(tokenizer), train, val, progress=False)
    path = os.path.join(tmp_path, "hf")
    from sdjax.models.hf import save_hf
    save_hf(path, _model(tokenizer), result.params, tokenizer)
    loaded = load_hf(path)
    ids = np.asarray(val[:40], np.int32)[None]
    ours = sequence_forward(loaded.params, loaded.config, ids).logits
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        theirs = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=1e-4)
    assert len(transformers.AutoTokenizer.from_pretrained(path)) == len(tokenizer)
