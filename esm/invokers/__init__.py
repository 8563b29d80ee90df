"""A function's one door: what sources call (`Function`, built by `create_functions`), what
every kind returns (`InvocationResult`, `FunctionFailure`) and what every kind implements
(the `Invoker` protocol). The kinds themselves are the modules beside this one: `python`
(in-process), `process` and `runtime_api` (a Runtime API environment), `http`, `lambda_`.

Sources import from here only; they never know which kind of function ran.
"""

from esm.invokers.function import (
    Function,
    create_functions,
    create_invoker,
    function_concurrency,
)
from esm.invokers.result import (
    MAX_RESPONSE_BYTES,
    FunctionFailure,
    InvocationResult,
    Invoker,
    response_too_large,
)

__all__ = [
    "MAX_RESPONSE_BYTES",
    "Function",
    "FunctionFailure",
    "InvocationResult",
    "Invoker",
    "create_functions",
    "create_invoker",
    "function_concurrency",
    "response_too_large",
]
