"""Generated gRPC stubs for the CSI spec (csi.v1 Identity and Node services).

Everything in this package is generated from proto/csi.proto by
scripts/gen_proto.py and is never edited by hand: change the .proto and run
`python scripts/gen_proto.py` (tests/test_proto.py fails on any difference).
"""
