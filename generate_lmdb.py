"""Pack item covers into the LMDB that PixelNet and ViNet read: python generate_lmdb.py --data_path dataset/

The paper's entry point, kept as its users type it; the command is REC/app/pack.py (also python -m REC pack).
"""
import sys

from REC.app.pack import main

if __name__ == "__main__":
    sys.exit(main())
