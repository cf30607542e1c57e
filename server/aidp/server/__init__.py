"""The JSON-RPC face: a thin pygls adapter over the engine."""
