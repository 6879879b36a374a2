"""What is inside a .pte without running it: the delegates of each method, their compile
specs and where each delegate's payload lies in the file.

Parses the program flatbuffer with ExecuTorch's own (private) deserializer, the same one
`_extract_delegate_payload` uses, and keeps the absolute payload offsets so callers can read
(or, in tests, damage) a payload in place."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ArtifactError, first_line


@dataclass
class Delegate:
    backend: str  # e.g. "CoreMLBackend", "XnnpackBackend"
    method: str
    compile_specs: dict[str, bytes] = field(default_factory=dict)
    offset: int = 0  # absolute offset of the payload in the .pte
    size: int = 0
    inline: bool = False


def delegates(pte: bytes) -> list[Delegate]:
    """Every delegate of every method, in program order; ArtifactError when the program
    flatbuffer does not parse."""
    from executorch.exir._serialize._program import _flatbuffer_to_program, _get_extended_header
    from executorch.exir.schema import DataLocation

    try:
        header = _get_extended_header(pte)
        program_size = header.program_size if header is not None else len(pte)
        program = _flatbuffer_to_program(pte[:program_size])
    except Exception as exc:  # the flatbuffer reader raises many types on damaged input
        raise ArtifactError(
            f"the ExecuTorch program does not parse ({first_line(exc)}); the file is damaged, export it again"
        ) from None
    found = []
    for plan in program.execution_plan:
        for d in plan.delegates:
            specs = {s.key: bytes(s.value) for s in d.compile_specs}
            entry = Delegate(backend=d.id, method=plan.name, compile_specs=specs)
            if d.processed.location == DataLocation.SEGMENT:
                if header is None:
                    raise ArtifactError(
                        f"delegate {d.id} points into a segment but the file has no segment header; "
                        "the file is damaged, export it again"
                    )
                segment = program.segments[d.processed.index]
                entry.offset = header.segment_base_offset + segment.offset
                entry.size = segment.size
            else:  # inline: the bytes sit inside the flatbuffer; locate them by content
                data = bytes(program.backend_delegate_data[d.processed.index].data)
                entry.offset, entry.size, entry.inline = pte.find(data), len(data), True
            if entry.offset < 0 or entry.offset + entry.size > len(pte):
                raise ArtifactError(
                    f"delegate {d.id}'s payload lies outside the file; it is truncated, export it again"
                )
            found.append(entry)
    return found


def payload(pte: bytes, delegate: Delegate) -> bytes:
    return pte[delegate.offset : delegate.offset + delegate.size]
