"""Shared by both functions through the layer: how an order's table key is spelled."""


def order_key(order_id: str) -> str:
    return f"order#{order_id}"
