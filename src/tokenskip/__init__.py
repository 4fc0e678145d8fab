"""tokenskip: controllable chain-of-thought compression (TokenSkip, Xia et al., 2025).

Packages by role, lowest layer first (each imports only from the layers below it; tests/test_architecture.py):
contract (records, file layout, ratios, I/O, configs) < task (benchmarks, prompts, grading) < engines
(HF, vLLM, OpenAI-compatible) < generation / compress / finetune (the cores) < methods < stages / lab /
serving < pipeline < cli. See README "Where things are".
"""

__version__ = "0.2.0"
