"""The benchmark scripts' configuration specs (the scripts themselves print figures; they are not timed here)."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import REPO


def load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_train_configs():
    bt = load("bench_train")
    assert bt.parse_config("padded:float32") == {"layout": "padded", "dtype": "float32", "micro": 8}
    assert bt.parse_config("packed:auto:2") == {"layout": "packed", "dtype": "auto", "micro": 2}
    for bad in ("packed", "packed:fp32", "stacked:auto", "packed:auto:3", "packed:auto:0"):
        with pytest.raises(ValueError, match="LAYOUT:DTYPE"):
            bt.parse_config(bad)
    cfg = bt.train_config(bt.parse_config("packed:bfloat16:2"), "d", "o", bt.argparse.Namespace(
        model="m", batch_size=8, threads="1"))
    assert (cfg.per_device_batch_size, cfg.grad_accum, cfg.padding_free, cfg.dtype, cfg.bf16) == (
        2, 4, True, "float32", True)


def test_bench_generation_configs():
    bg = load("bench_generation")
    hf = bg.parse_config("hf:float32:32")
    assert (hf["engine"], hf["dtype"], hf["batch_size"]) == ("hf", "float32", 32)
    v = bg.parse_config("vllm:auto:eager,prefix,seqs=64,kv=4")
    assert v["vllm"] == {"enforce_eager": True, "enable_prefix_caching": True, "max_num_seqs": 64,
                         "kv_cache_space_gb": 4}
    assert bg.parse_config("vllm:float32")["vllm"] == {"enforce_eager": False}
    assert bg.resolved(bg.parse_config("hf:float32:8")) != bg.resolved(bg.parse_config("hf:float32:32"))
    for bad in ("tgi:float32", "vllm:auto:turbo", "hf:fp8:8"):
        with pytest.raises(ValueError, match="config"):
            bg.parse_config(bad)


def test_bench_serve_reads_any_openai_compatible_health():
    # issue 26 item 11: vLLM's own server answers /health with 200 and an empty body (bench_serve crashed on it)
    bs = load("bench_serve")

    class Resp:
        def __init__(self, status, body):
            self.status_code, self.body = status, body

        def json(self):
            import json

            return json.loads(self.body)

    def client(health_status, health_body):
        pages = {"/health": Resp(health_status, health_body),
                 "/v1/models": Resp(200, '{"data": [{"id": "m1"}, {"id": "m2"}]}')}
        return type("HTTPX", (), {"get": staticmethod(lambda url, timeout=None: pages[url[len("http://x"):]])})

    assert bs.server_health(client(200, ""), "http://x") == {"status": "ready", "models": ["m1", "m2"]}
    ours = '{"status": "ready", "models": ["adapter"], "max_batch_seen": 8}'
    assert bs.server_health(client(200, ours), "http://x") == {"status": "ready", "models": ["adapter"],
                                                                 "max_batch_seen": 8}
    assert bs.server_health(client(503, ""), "http://x") == {"status": "HTTP 503"}


def test_bench_ray_arguments():
    br = load("bench_ray")
    a = br.parse_args(["--actors", "1", "2", "--limit", "8"])
    assert a.actors == [1, 2] and a.limit == 8 and a.shard_size is None
    with pytest.raises(SystemExit):
        br.parse_args(["--actors", "0"])
