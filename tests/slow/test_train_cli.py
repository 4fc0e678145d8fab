"""``tokenskip train`` on the packaged 135M model (slow)."""

from __future__ import annotations

import json
import math

import pytest

from test_train import sft_rows
from tokenskip.contract.io import write_jsonl_atomic


@pytest.mark.slow
def test_cli_on_packaged_model(tmp_path, smol_tokenizer):
    from tokenskip.cli import main

    write_jsonl_atomic(tmp_path / "sft" / "train.jsonl", sft_rows(smol_tokenizer, 8))
    rc = main(["train", "--model", "smollm2-135m-instruct", "--data", str(tmp_path / "sft"), "--max-steps", "2",
               "--out", str(tmp_path / "adapter"), "--threads", "1"])
    assert rc == 0
    # the name the user gave, not the absolute cache folder the GGUF alias was converted into
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())[
        "base_model_name_or_path"] == "smollm2-135m-instruct"
    metrics = json.loads((tmp_path / "adapter" / "train_metrics.json").read_text())
    assert metrics["global_step"] == 2 and math.isfinite(metrics["train_loss"])
