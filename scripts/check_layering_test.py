#!/usr/bin/env python3
"""Shows that check_layering.py catches each kind of violation and passes a clean tree."""
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_layering  # noqa: E402


def make_tree(files):
    root = tempfile.mkdtemp()
    for path, text in files.items():
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)
    return root


class CheckLayeringTest(unittest.TestCase):
    def test_clean_tree_passes(self):
        root = make_tree({
            "common/a.h": "#include <vector>\n",
            "model/b.h": '#include "common/a.h"\n',
            "worker/c.cc": '#include "model/b.h"\n#include "kernels/ops.h"\n',
            "kernels/cpu/d.cc": '#include "kernels/ops.h"\n#include "kernels/cpu/e.h"\n',
            "launch/main.cc": '#include "kernels/cpu/cpu_backend.h"\n#include <mpi.h>\n',
        })
        self.assertEqual(check_layering.check(root), [])

    def test_upward_include_fails(self):
        root = make_tree({"model/b.h": '#include "worker/c.h"\n'})
        errors = check_layering.check(root)
        self.assertEqual(len(errors), 1)
        self.assertIn("model/b.h:1", errors[0])

    def test_same_level_sibling_fails(self):
        root = make_tree({"model/b.h": '#include "kernels/ops.h"\n'})
        self.assertEqual(len(check_layering.check(root)), 1)

    def test_vendor_header_outside_backend_fails(self):
        root = make_tree({"worker/x.cc": "#include <cuda_runtime.h>\n",
                          "kernels/cuda/y.cu": "#include <cuda_runtime.h>\n"})
        errors = check_layering.check(root)
        self.assertEqual(len(errors), 1)
        self.assertIn("worker/x.cc", errors[0])

    def test_concrete_backend_outside_launch_fails(self):
        root = make_tree({"worker/x.cc": '#include "kernels/cpu/cpu_backend.h"\n'})
        errors = check_layering.check(root)
        self.assertEqual(len(errors), 1)
        self.assertIn("concrete backend", errors[0])


if __name__ == "__main__":
    unittest.main()
