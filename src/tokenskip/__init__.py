"""tokenskip: controllable chain-of-thought compression (TokenSkip, Xia et al., 2025).

Pipeline, one module per stage: data -> generate -> grading -> compress -> sft -> train ->
evaluate -> report, tied together by pipeline (recipes).
"""

__version__ = "0.1.0"
