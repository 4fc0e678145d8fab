"""``original``: the base model as is (paper Table 1, first row)."""

from tokenskip.methods import Method, register


@register
class Original(Method):
    name, label, rank = "original", "Original", 0
