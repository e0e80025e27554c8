"""``python -m onnxrec`` runs the CLI (also what torchrun launches)."""

from onnxrec.cli import main

if __name__ == "__main__":
    main()
