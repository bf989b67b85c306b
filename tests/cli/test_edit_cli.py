"""``tuner edit`` and bad-input handling through the real CLI process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_cli


def _assert_one_line_error(proc, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("tuner: error:")]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_edit_json_has_the_documented_keys(default_model):
    proc = run_cli("edit", "--fact", "3", "--layer", "0", "--steps", "12", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    from tuner.metrics.record import FIELDS, STORED

    # the record is complete: every measure declared once (tuner.metrics.record), every stored one present
    assert set(STORED) <= set(out["metrics"]) <= set(FIELDS), set(out["metrics"]) ^ set(FIELDS)
    n = out["metrics"]["n_steps"]
    assert len(out["trajectory"]["prob"]) == n and (n == 12 or out["metrics"]["early_stopped"])
    assert out["context_templates"][0] == "{}"
    assert out["hparams"]["layer"] == 0 and out["hparams"]["v_num_grad_steps"] == 12
    assert set(out["timings"]) == {"stats", "k_star", "v_star", "update", "eval"}


def test_edit_table(default_model):
    proc = run_cli("edit", "--fact", "1", "--steps", "8")
    assert proc.returncode == 0, proc.stderr
    assert "P(new) before" in proc.stdout and "rebound" in proc.stdout
    assert len([ln for ln in proc.stdout.splitlines() if ln.strip()[:1].isdigit()]) == 8


@pytest.mark.slow
def test_edit_with_memit(default_model):
    """--method memit edits over the window (v* at its last layer); a window past the top: exit 2."""
    proc = run_cli("edit", "--fact", "3", "--method", "memit", "--layer", "0", "--window-size", "2", "--steps", "12",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["hparams"]["method"] == "memit" and out["metrics"]["memit_pass"] is True
    assert out["metrics"]["division_factor"] is None and len(out["trajectory"]["prob"]) <= 12
    table = run_cli("edit", "--fact", "3", "--method", "memit", "--layer", "0", "--steps", "8")
    assert table.returncode == 0 and "memit, layers 0-1 (v* at the last)" in table.stdout, table.stderr
    _assert_one_line_error(run_cli("edit", "--method", "memit", "--layer", "3", "--window-size", "2"),
                           "hparams.layer 3 + window_size 2 exceeds the model's 4 layers")


def test_layer_out_of_range(default_model):
    _assert_one_line_error(run_cli("edit", "--layer", "9"), "hparams.layer 9 is out of range")


def test_fact_index_out_of_range(default_model):
    _assert_one_line_error(run_cli("edit", "--fact", "100000"), "--fact 100000 is out of range")


@pytest.mark.parametrize(
    "yaml_text, needle",
    [
        ("name: x\nmodel: {name: default\n", "malformed YAML"),
        ("name: x\nbogus_key: 1\n", "unknown key bogus_key"),
        ("name: x\nhparams: {v_lr: -1}\n", "hparams.v_lr must be > 0"),
        ("name: x\nhparams: {v_lrr: 1}\n", "unknown key hparams.v_lrr"),
    ],
)
def test_bad_yaml(tmp_path, yaml_text, needle):
    cfg = tmp_path / "study.yaml"
    cfg.write_text(yaml_text)
    _assert_one_line_error(run_cli("edit", "--config", str(cfg)), needle)


@pytest.mark.parametrize(
    "records, needle",
    [
        ([], "the fact file is empty"),
        ([{"requested_rewrite": {"prompt": "{} is in", "subject": "", "target_new": {"str": "a"},
                                 "target_true": {"str": "b"}}}], "fact record 0: subject missing"),
        ([{"requested_rewrite": {"prompt": "Y is in", "subject": "X", "target_new": {"str": "a"},
                                 "target_true": {"str": "b"}}}], "subject 'X' not in prompt 'Y is in'"),
        ([{"requested_rewrite": {"prompt": "{} is {}", "subject": "X", "target_new": {"str": "a"},
                                 "target_true": {"str": "b"}}}], "must contain exactly one '{}'"),
        ([{"requested_rewrite": {"prompt": "{} is in", "subject": "X", "target_new": {"str": ""},
                                 "target_true": {"str": "b"}}}], "target_new is empty"),
    ],
)
def test_bad_fact_files(tmp_path, records, needle):
    (tmp_path / "facts.json").write_text(json.dumps(records))
    cfg = tmp_path / "study.yaml"
    cfg.write_text(f"name: x\nfacts: {{path: {tmp_path / 'facts.json'}}}\n")
    _assert_one_line_error(run_cli("edit", "--config", str(cfg)), needle)


def test_unknown_architecture(tmp_path, tiny_tok):
    from transformers import OPTConfig, OPTForCausalLM

    OPTForCausalLM(OPTConfig(hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                             vocab_size=len(tiny_tok), word_embed_proj_dim=16)).save_pretrained(tmp_path / "opt")
    tiny_tok.save_pretrained(tmp_path / "opt")
    cfg = tmp_path / "study.yaml"
    cfg.write_text(f"name: x\nmodel: {{name: {tmp_path / 'opt'}}}\nfacts: {{path: {ROOT / 'studies/facts/synthetic_edits.json'}}}\n")
    _assert_one_line_error(run_cli("edit", "--config", str(cfg)), "unknown architecture 'opt'")


def test_missing_config_file():
    _assert_one_line_error(run_cli("edit", "--config", "nope.yaml"), "config file not found: nope.yaml")


@pytest.mark.parametrize("argv", [["--help"], ["edit", "--help"], ["launch", "--help"]])
def test_help_imports_no_heavy_library(argv):
    """``tuner --help`` must not pay for torch, transformers or plotly (imported lazily by commands)."""
    code = ("import sys\nfrom tuner.cli.main import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'plotly', 'optuna') if m in sys.modules)\n"
            "print('HEAVY', heavy)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: tuner" in proc.stdout and "HEAVY []" in proc.stdout, proc.stdout[-300:]


def test_edit_judges_disabling_with_the_study_thresholds(default_model, tmp_path):
    """``tuner edit --config`` scores with the study's ``objective.max_update_norm``: the same edit
    is disabling under a study whose threshold is below its update norm, and not under the default."""
    from tests.workspace import study_file

    args = ("edit", "--fact", "3", "--layer", "0", "--steps", "8", "--json")
    plain = json.loads(run_cli(*args).stdout)["metrics"]
    assert not plain["disabling_edit"] and 0 < plain["update_norm"] < 25
    strict = study_file(tmp_path / "strict.yaml", objective={"max_update_norm": plain["update_norm"] / 2})
    proc = run_cli(*args, "--config", str(strict))
    assert proc.returncode == 0, proc.stderr
    judged = json.loads(proc.stdout)["metrics"]
    assert judged["update_norm"] == plain["update_norm"] and judged["disabling_edit"]
