"""atheris fuzz target for the two header parsers quantllm runs on files users hand it
(``quant_core.file_headers``): any input must parse or raise CheckpointError; any other
exception (struct.error, IndexError, MemoryError, a hang on a huge count) is a finding.

Run: python tests/fuzz/fuzz_headers.py [CORPUS_DIR] -runs=N   (atheris/libFuzzer flags)
``tests/quant_core/hostile/test_fuzz_headers.py`` runs it briefly from seeds it writes.
"""
from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["quant_core.file_headers"]):
    from quant_core.errors import CheckpointError
    from quant_core.file_headers import parse_gguf_header, parse_safetensors_header


def test_one_input(data: bytes) -> None:
    # The first byte picks the parser, so one corpus holds seeds of both formats.
    if not data:
        return
    body = data[1:]
    try:
        if data[0] & 1:
            parse_gguf_header(body)
        else:
            header_len = int.from_bytes(body[:8].ljust(8, b"\0"), "little")
            header = body[8:8 + header_len]
            parse_safetensors_header(header, max(0, len(body) - 8 - header_len))
    except CheckpointError:
        pass


def main(argv: list[str]) -> None:
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
