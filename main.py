"""Train and evaluate a PixelRec model: python main.py --device cpu --config_file IDNet/sasrec.yaml overall/ID.yaml"""
import sys

from REC.app.launch import main

if __name__ == "__main__":
    sys.exit(main())
