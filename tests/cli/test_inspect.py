"""``tuner inspect``: architecture facts read from the loaded model, printed and written."""

from __future__ import annotations

from tests.conftest import run_cli
from tests.workspace import shared_home


def test_inspect_default_model(tmp_path, default_model):
    home = shared_home(tmp_path / "home")
    proc = run_cli("inspect", env={"TUNER_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for needle in ("4 layers, d_model 128, d_ff 512", "batch-first", "RMSNorm", "post_attention_layernorm",
                   "engine pads left", "prefix tokens: <s>", "v_loss_layer = 3", "middle 30–70 % layer band: 1–2",
                   "`model.layers.2.mlp.down_proj`"):
        assert needle in out, needle
    assert (home / "reports/default/inspect.md").read_text() in out
