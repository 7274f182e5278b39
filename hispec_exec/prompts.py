"""The user's own prompts: read a prompts file (JSONL, plain text or ShareGPT JSON) and
turn it into token ids with the model's own tokenizer (`tokenizer.json` through the
`tokenizers` library; bytes for our byte-level checkpoints). No network.

Every bad input raises ValueError("field: ...") naming the file's line or record.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Callable, NamedTuple

from hispec_sim.schema import file_lines, json_type, read_text_bounded, regular_file, shown

MAX_FILE_BYTES = 256 * 2**20
MAX_PROMPTS = 100_000
FORMATS = ("jsonl", "text", "sharegpt")


def _format_for(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    return {".jsonl": "jsonl", ".txt": "text", ".json": "sharegpt"}.get(path.suffix.lower(), "jsonl")


def _json(text: str, where: str):
    from hispec_sim.schema import parse_json_text

    return parse_json_text(text, "prompts_file", where)  # bounded; a key twice is refused


def read_prompts(path: str | Path, fmt: str | None = None, field: str | None = None) -> list[tuple[str, str]]:
    """[(where, text)] in file order: where = 'line 3' (jsonl, text) or 'record 3' (sharegpt).

    jsonl: one JSON object per line, the prompt in `field` (default 'prompt'); text: one
    prompt per non-empty line; sharegpt: a JSON array of {"conversations": [{"from":
    "human", "value": ...}, ...]} (`field` names the conversation list, default
    'conversations'), the first human turn is the prompt.
    """
    path = Path(path)
    guessed = fmt is None
    fmt = _format_for(path, fmt)
    size = regular_file(path, "prompts_file").st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"prompts_file: {shown(path)} is {size} bytes; at most {MAX_FILE_BYTES} allowed")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"prompts_file: cannot read {shown(path)} ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"prompts_file: {shown(path)} is not UTF-8 text (line {line}, byte {e.start}); "
                         f"allowed: UTF-8 encoded {fmt}") from None
    text = text.removeprefix("\ufeff")
    out: list[tuple[str, str]] = []
    if fmt == "text":
        out = [(f"line {i}", ln) for i, ln in enumerate(file_lines(text), 1) if ln.strip()]
    elif fmt == "jsonl":
        field = field or "prompt"
        for i, ln in enumerate(file_lines(text), 1):
            if not ln.strip():
                continue
            rec = _json(ln, f"line {i}")
            if not isinstance(rec, dict):
                raise ValueError(f"prompts_file: line {i} is a JSON {json_type(rec)}, expected an object with "
                                 f"field {field!r}")
            if field not in rec:
                have = ", ".join(sorted(map(str, rec))[:8]) or "no fields"
                raise ValueError(f"field: line {i} has no field {field!r} (it has: {have}); choose one with --field")
            if not isinstance(rec[field], str):
                raise ValueError(f"field: line {i}: {field!r} must be a string, got a JSON {json_type(rec[field])}")
            out.append((f"line {i}", rec[field]))
            if len(out) > MAX_PROMPTS:
                break
    else:
        # a .json file is taken for ShareGPT: where it is not, say so (a JSONL file named .json)
        hint = f" ({shown(path)} is read as ShareGPT for its .json suffix; a JSONL file? pass --format jsonl)" \
            if guessed else ""
        try:
            data = _json(text, str(path))
        except ValueError as e:
            raise ValueError(f"{e}{hint}") from None
        if not isinstance(data, list):
            raise ValueError(f"prompts_file: a ShareGPT file is a JSON array of conversations, got a JSON "
                             f"{json_type(data)}{hint}")
        key = field or "conversations"
        skipped = 0
        for i, rec in enumerate(data, 1):
            turns = rec.get(key) if isinstance(rec, dict) else None
            if not isinstance(turns, list):
                raise ValueError(f"field: record {i} has no list {key!r} of turns; choose it with --field")
            first = next((t for t in turns if isinstance(t, dict) and str(t.get("from") or t.get("role")).lower() in
                          ("human", "user")), None)
            texts = [] if first is None else [first[k] for k in ("value", "content") if isinstance(first.get(k), str)]
            if first is not None and not texts:
                raise ValueError(f"field: record {i}: the first human turn has no text 'value' or 'content'")
            value = next((t for t in texts if t.strip()), None)  # the one with text
            if value is None:  # no user turn, or an empty one (scraped dumps have them): no prompt
                skipped += 1
                continue
            out.append((f"record {i}", value))
            if len(out) > MAX_PROMPTS:
                break
        if skipped and out:  # none at all is refused below, as an empty file
            print(f"hispec-sim: note: prompts_file: {skipped} of {skipped + len(out)} conversations have no human/user turn, or an "
                  f"empty first one; skipped", file=sys.stderr)
    if len(out) > MAX_PROMPTS:
        raise ValueError(f"prompts_file: more than {MAX_PROMPTS} prompts; split the file")
    for where, t in out:
        if not t.strip():
            raise ValueError(f"prompts_file: {where}: the prompt is empty")
        try:  # JSON's "\ud800" decodes to a lone surrogate, which no tokenizer can encode
            t.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"prompts_file: {where}: not valid Unicode (a lone surrogate escape such as \\ud800)") from None
    if not out:
        why = (f": none of its {skipped} conversations has a human/user turn with text" if fmt == "sharegpt" and skipped
               else "")
        raise ValueError(f"prompts_file: {shown(path)} holds no prompts (format {fmt}){why}")
    return out


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json")


def check_tokenizer_files(folder: Path) -> bool:
    """Whether the folder carries a tokenizer; each of its files must be a regular file of at
    most MAX_FILE_BYTES (a FIFO or /dev/zero would block or fill memory in the tokenizer
    libraries' own readers, beyond the reach of an interrupt)."""
    present = [folder / f for f in TOKENIZER_FILES if (folder / f).exists()]
    for f in present:
        if regular_file(f, "tokenizer").st_size > MAX_FILE_BYTES:
            raise ValueError(f"tokenizer: {f} is larger than {MAX_FILE_BYTES / 2**20:.0f} MiB")
    return bool(present)


class TextCodec(NamedTuple):
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    how: str  # "bytes (UTF-8)" or which tokenizer.json
    digest: str | None = None  # the tokenizer.json's ("sha256:..."); None for bytes

    @property
    def is_bytes(self) -> bool:
        return self.how.startswith("bytes")


def tokenizer_digest(text: str) -> str:
    """sha256 of a tokenizer.json's content (keys sorted, no spaces): a file saved again
    with other formatting is the same tokenizer."""
    canonical = json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def text_codec(model, model_folder: str | Path | None) -> TextCodec:
    """Text <-> token ids for this checkpoint, the same for every command that reads text
    (`profile measure`, `validate`, `hispec-exec run/generate/serve`): the checkpoint's
    tokenizer.json (tokenizers library) when the folder has one, with the tokenizer's own
    special tokens (a Llama tokenizer's BOS, as its users' requests carry it); otherwise
    bytes for a byte-level model. One codec, so a profile's acceptance is measured on the
    token ids the executor then runs."""
    from .data import decode_bytes, encode as encode_bytes

    vocab = model.args.vocab_size
    folder = Path(model_folder) if model_folder is not None else None
    tj = folder / "tokenizer.json" if folder is not None else None
    if folder is not None:
        check_tokenizer_files(folder)
    if tj is not None and tj.exists():
        try:
            from tokenizers import Tokenizer
        except ImportError:  # pragma: no cover - a dependency of the project
            raise ValueError("tokenizer: reading tokenizer.json needs the `tokenizers` package (pip install tokenizers)") from None
        text = read_text_bounded(tj, "tokenizer", MAX_FILE_BYTES)  # the bound check_tokenizer_files states
        try:
            tok = Tokenizer.from_str(text)
        except Exception as e:
            raise ValueError(f"tokenizer: cannot read {tj} ({' '.join(str(e).split())[:120]})") from None
        n = tok.get_vocab_size(with_added_tokens=True)
        if n > vocab:
            raise ValueError(f"tokenizer: {tj} has {n} tokens but the checkpoint's vocabulary has {vocab} "
                             f"(config vocab_size): it is not this checkpoint's tokenizer")

        def encode(text: str) -> list[int]:
            try:
                ids = tok.encode(text).ids
            except Exception as e:  # the library raises a bare Exception (e.g. WordLevel without an unk token)
                raise ValueError(f"tokenizer: {tj} cannot encode {text[:40]!r}"
                                 f"{'...' if len(text) > 40 else ''} ({' '.join(str(e).split())[:120]})") from None
            if ids and max(ids) >= vocab:
                raise ValueError(f"tokenizer: {tj} produced token id {max(ids)} >= the checkpoint's vocabulary {vocab}")
            return ids
        return TextCodec(encode, lambda ids: tok.decode(list(ids), skip_special_tokens=True),
                         f"tokenizer.json of {folder.name} ({n} tokens)",
                         tokenizer_digest(text))
    if folder is not None and any((folder / f).exists() for f in ("tokenizer.model", "tokenizer_config.json")):
        raise ValueError(f"tokenizer: {folder} has no tokenizer.json (only a slow/sentencepiece tokenizer); save a fast "
                         f"tokenizer there (transformers: AutoTokenizer.from_pretrained(...).save_pretrained(folder))")
    if vocab < 256:
        raise ValueError(f"tokenizer: {folder or 'the model'} has no tokenizer.json and its vocabulary ({vocab}) is "
                         f"too small for bytes; add the checkpoint's tokenizer.json")
    return TextCodec(encode_bytes, decode_bytes, "bytes (UTF-8)")


def heldout_token_prompts(codec: TextCodec, n: int, length: int, seed: int, exact: bool = False) -> list[list[int]]:
    """n held-out prompts as the codec's token ids. `length` is bytes of held-out source
    (the same text for every model: run, profile measure, validate); with `exact`, prompts
    of exactly `length` token ids, each the first tokens of a longer held-out text (serve's
    prompt lengths, which are in tokens)."""
    from .data import decode_bytes, heldout_files, heldout_prompts

    if codec.is_bytes:
        return heldout_prompts(n, length, seed)
    if not exact:
        return [codec.encode(decode_bytes(p)) or [0] for p in heldout_prompts(n, length, seed)]
    longest = max(len(data) for _, data in heldout_files()) - 512  # heldout_prompts' margin
    nbytes = min(4 * length, longest)
    while True:
        ids = [codec.encode(decode_bytes(p)) for p in heldout_prompts(n, nbytes, seed)]
        if all(len(x) >= length for x in ids):
            return [x[:length] for x in ids]
        if nbytes >= longest:
            raise ValueError(f"prompt_len: the held-out text is too short for {length}-token prompts "
                             f"in the {codec.how}")
        nbytes = min(2 * nbytes, longest)


def encode_prompts(prompts: list[tuple[str, str]], encode, max_new_tokens: int, capacity: int) -> list[list[int]]:
    """Token ids per prompt; each must leave room for max_new_tokens (+1 pending) in the
    model's context."""
    limit = capacity - max_new_tokens - 1
    if limit < 1:
        raise ValueError(f"max_new_tokens: must be at most {capacity - 2} for this model's context {capacity}")
    out = []
    for where, text in prompts:
        ids = encode(text)
        if not ids:
            raise ValueError(f"prompts_file: {where}: the prompt encodes to no tokens")
        if len(ids) > limit:
            raise ValueError(f"prompts_file: {where}: the prompt has {len(ids)} tokens; with --max-new-tokens "
                             f"{max_new_tokens} the model's context {capacity} allows at most {limit}")
        out.append(ids)
    return out
