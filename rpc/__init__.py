"""The device farm: a TVM RPC tracker and the boards that register with it."""
