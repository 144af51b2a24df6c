"""Extract frozen image features for the ViNet models:

    python -m REC features --config_file overall/ResNet50.yaml --data_path=dataset/ --dataset=Pixel200K \
        --device 0 --precision bf16

The logic lives in ``extract.py``; this module only parses arguments and reports errors in one line.
"""
from __future__ import annotations

import argparse
import sys

from ..config import split_config_files
from ..utils.errors import UserError
from ..utils.logging import setup_logging
from .extract import extract_features, feature_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m REC features", allow_abbrev=False,  # an abbreviation must not eat a --key=value
        description="Encode every item's cover with a frozen image encoder (no projection head) into one .npy "
                    "[item_num, width] float32 (row i = internal item id i, row 0 padding zeros) for the ViNet "
                    "models' v_feat_path; --spatial writes feature maps for ACF. Interrupted runs continue where "
                    "they stopped when rerun with the same options.",
        epilog="Any --key=value after the options overrides a config key, as for main.py (e.g. --data_path=dataset/ "
               "--dataset=Pixel200K --encoder_readout=pool --encoder_weights=RN50.pt). The encoder comes from "
               "the keys encoder, encoder_pretrained, encoder_weights, encoder_readout, image_norm and image_size.")
    p.add_argument("--config_file", nargs="+", required=True, metavar="YAML",
                   help="config files merged left to right, e.g. overall/ResNet50.yaml (a model is optional)")
    p.add_argument("--output", metavar="PATH.npy",
                   help="feature file to write (default: <data_path>/visual_features/<encoder>.npy, or "
                        "<encoder>_spatial.npy with --spatial; '/' in the encoder name becomes '_')")
    p.add_argument("--spatial", action="store_true",
                   help="write the last feature map per item instead of the pooled vector, for ACF: [H, W, D] "
                        "for CNNs (before pooling) and Swin, [R, D] patch tokens for ViT/BEiT")
    p.add_argument("--device", default="cpu", help="cpu, or one GPU id such as 0 (the launcher's grammar; cuda and "
                   "cuda:N also work)")
    p.add_argument("--batch_size", type=int, metavar="N",
                   help="covers per encoder call (default: the config's cover_batch_size); may change on resume")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                   help="autocast dtype of the encoder (default: the config's precision); the file is float32")
    p.add_argument("--workers", type=int, metavar="N",
                   help="DataLoader processes decoding covers (default: the config's num_workers; 0 = in process)")
    p.add_argument("--max_batches", type=int, metavar="N",
                   help="stop after N chunks of --batch_size items and keep the partial file (for time-limited jobs); "
                        "rerun to continue")
    p.add_argument("--restart", action="store_true",
                   help="discard a partial file left by an earlier run instead of continuing it (needed when the "
                        "settings changed)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output file (only once the new one is complete)")
    args, overrides = p.parse_known_args(argv)
    args.config_file, overrides = split_config_files(args.config_file, overrides)
    return args, overrides


def main(argv=None) -> int:
    args, overrides = parse_args(argv)
    setup_logging(None, 0)
    try:
        config = feature_config(args.config_file, overrides)
        result = extract_features(config, args.output, spatial=args.spatial, device=args.device,
                                  batch_size=args.batch_size, precision=args.precision, workers=args.workers,
                                  max_batches=args.max_batches, restart=args.restart, overwrite=args.overwrite)
    except (UserError, OSError) as exc:  # OSError: the files named on the command line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the rows done so far are kept; rerun the same command to continue", file=sys.stderr)
        return 130
    print(f"features {'written to' if result.complete else 'partly written to'} {result.path} "
          f"(shape {list(result.shape)})")
    return 0
