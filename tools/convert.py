"""Convert a CodeGen checkpoint (directory, .npz or hub id) into one .npz: the same as
``python -m minicodegen convert``.

    python tools/convert.py Salesforce/codegen-350M-mono -o codegen-350M-mono.npz [--dtype bfloat16] [--force]
"""

import sys

from minicodegen.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
