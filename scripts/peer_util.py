"""What the peer scripts (peer_decode_hf.py, peer_attention_torch.py) share: reading a tessera
benchmark's table from its log, and finding torch and the device to run on."""
import re
import sys


def table_rows(path, pattern, item):
    """{key: value} for every line of the log at `path` that the regex `pattern` matches from its
    start; `item(match)` gives the (key, value) of a row."""
    rows = {}
    row = re.compile(pattern)
    with open(path, encoding="utf-8") as log:
        for line in log:
            m = row.match(line)
            if m:
                key, value = item(m)
                rows[key] = value
    return rows


def torch_on(device_name, prog, hint):
    """(torch, device), or None after saying on stderr why `prog` skips: no torch (`hint` says
    what to install), or a CUDA device that torch does not see."""
    try:
        import torch
    except ImportError as e:
        print(f"{prog}: skipped: {e} ({hint})", file=sys.stderr)
        return None
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"{prog}: skipped: torch sees no CUDA device", file=sys.stderr)
        return None
    return torch, device
