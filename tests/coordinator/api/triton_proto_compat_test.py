#!/usr/bin/env python3
"""Checks that proto/inference/*.proto stay wire-compatible with the protocol tritonclient uses.

  triton_proto_compat_test.py PROTO_DIR [PROTOC]

Compiles tessera's inference/grpc_service.proto (with protoc) and compares every message, enum
and RPC it keeps with tritonclient.grpc's own descriptors: the same names, field numbers, types,
labels and oneofs. Exits 77 (skip) when tritonclient[grpc] is not installed.
"""
import os
import subprocess
import sys
import tempfile

try:
    from google.protobuf import descriptor_pb2
    from tritonclient.grpc import model_config_pb2, service_pb2
except ImportError as e:
    print(f"SKIP: tritonclient[grpc] is not installed ({e})", file=sys.stderr)
    sys.exit(77)


def index(prefix, messages, enums, out):
    for m in messages:
        out[prefix + m.name] = m
        index(prefix + m.name + ".", m.nested_type, m.enum_type, out)
    for e in enums:
        out[prefix + e.name] = e


def main(argv):
    proto_dir = argv[1]
    protoc = argv[2] if len(argv) > 2 else "protoc"
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "set.pb")
        subprocess.run([protoc, f"--proto_path={proto_dir}", f"--descriptor_set_out={out}",
                        "--include_imports", "inference/grpc_service.proto"], check=True)
        ours = descriptor_pb2.FileDescriptorSet()
        with open(out, "rb") as f:
            ours.ParseFromString(f.read())
    mine, theirs = {}, {}
    for f in ours.file:
        index("", f.message_type, f.enum_type, mine)
    their_methods = {}
    for module in (model_config_pb2, service_pb2):
        fd = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(fd)
        index("", fd.message_type, fd.enum_type, theirs)
        for service in fd.service:
            for m in service.method:
                their_methods[m.name] = (m.input_type, m.output_type, m.client_streaming,
                                         m.server_streaming)
    errors = []
    for name, ours_type in mine.items():
        their_type = theirs.get(name)
        if their_type is None:
            errors.append(f"{name}: not in Triton's protocol")
        elif isinstance(ours_type, descriptor_pb2.EnumDescriptorProto):
            if sorted((v.name, v.number) for v in ours_type.value) != sorted(
                    (v.name, v.number) for v in their_type.value):
                errors.append(f"enum {name} differs")
        else:
            key = lambda f: (f.name, f.number, f.type, f.label, f.type_name)
            a = sorted(map(key, ours_type.field))
            b = sorted(map(key, their_type.field))
            if a != b:
                errors.append(f"message {name} differs: {sorted(set(a) ^ set(b))}")
            if sorted(o.name for o in ours_type.oneof_decl) != sorted(
                    o.name for o in their_type.oneof_decl):
                errors.append(f"message {name}: oneofs differ")
    service = [f for f in ours.file if f.service][0].service[0]
    for m in service.method:
        got = (m.input_type, m.output_type, m.client_streaming, m.server_streaming)
        if their_methods.get(m.name) != got:
            errors.append(f"rpc {m.name} differs: {got} vs {their_methods.get(m.name)}")
    for e in errors:
        print("FAIL:", e, file=sys.stderr)
    print(f"compared {len(mine)} messages/enums and {len(service.method)} RPCs; "
          f"{len(errors)} differences")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
