"""A calculator tool that evaluates arithmetic safely, without ``eval``.

The expression is parsed with ``ast`` and only numbers, ``+ - * / // % **`` (``^`` also
means power), unary signs and parentheses are evaluated; anything else (names, calls,
attribute access) is rejected. Exponents and results are bounded so that a request such
as ``9**9**9`` fails fast instead of using all the memory.
"""

import ast
import math
import operator
from collections.abc import Callable

from langchain_core.tools import ToolException, tool

MAX_LENGTH = 1000
MAX_EXPONENT = 1000
MAX_INT_BITS = 4000  # about 1200 decimal digits

Number = int | float

BINARY_OPERATORS: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
UNARY_OPERATORS: dict[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as "2 * (3 + 4) ** 2" and return the result.

    Supports numbers, + - * / // % ** (or ^ for power) and parentheses; no variables or
    functions.
    """
    if len(expression) > MAX_LENGTH:
        raise ToolException(f"expression too long (over {MAX_LENGTH} characters)")
    try:
        tree = ast.parse(expression.replace("^", "**").strip(), mode="eval")
        value = _evaluate(tree.body)
    except SyntaxError as exc:
        raise ToolException(f"invalid expression {expression!r}: {exc.msg}") from None
    except ZeroDivisionError:
        raise ToolException("division by zero") from None
    except OverflowError:
        raise ToolException("result too large") from None
    except (RecursionError, MemoryError):
        raise ToolException("expression too complex") from None
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ToolException("result too large")
        return format(value, ".12g")  # 12 significant digits; 8/2 gives "4"
    return str(value)


def _evaluate(node: ast.expr) -> Number:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        if isinstance(node.value, bool):  # True and False are ints to Python
            raise ToolException(f"unsupported expression: {node.value}")
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY_OPERATORS:
        return UNARY_OPERATORS[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY_OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        result = BINARY_OPERATORS[type(node.op)](left, right)
        if isinstance(result, complex):  # e.g. (-8) ** 0.5
            raise ToolException("result is not a real number")
        if isinstance(result, int) and result.bit_length() > MAX_INT_BITS:
            raise ToolException("result too large")
        return result
    raise ToolException(f"unsupported expression: {ast.unparse(node)}")


def _check_power(base: Number, exponent: Number) -> None:
    """Refuse powers whose result would be huge before computing them."""
    if abs(exponent) > MAX_EXPONENT:
        raise ToolException(f"exponent too large (limit {MAX_EXPONENT})")
    if isinstance(base, int) and isinstance(exponent, int):
        fewest_bits = (abs(base).bit_length() - 1) * exponent
        if fewest_bits > MAX_INT_BITS:
            raise ToolException("result too large")
