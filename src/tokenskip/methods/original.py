"""``original``: the base model as is (paper Table 1, first row)."""

from tokenskip.contract.layout import ORIGINAL
from tokenskip.methods import Method, register


@register
class Original(Method):
    name, label, rank = ORIGINAL, "Original", 0
    color, marker = "black", "*"
