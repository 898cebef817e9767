"""How good are a model's pseudo-labels? Scores its confident predictions against the ground truth of images it
would see as unlabeled (the demo dataset keeps labels for every image, so this can be measured).

    python bench/pseudo_labels.py --config experiments/demo/ours/config.yaml --ckpt outputs/demo/ours/checkpoints/best.ckpt \
        [--data-root data/demo] [--list <data-root>/splits/unlabeled.txt] [--thresholds 0 0.5 0.8 0.95] [--limit 200] \
        [--weights student]   # from a training state (last.ckpt): the student, e.g. at the end of the warm-up
        [--oracle-share 0.4]  # that share of the images gets its true labels (the partial oracle's pseudo-labels)

Per confidence threshold t (max softmax of the linear head, as the mean teacher thresholds it): coverage (share of
labeled pixels with confidence >= t), pixel accuracy, mIoU and per-class IoU on those pixels, and the share of them
predicted background against the share that is background: what a student trained on these pseudo-labels is taught.
`--oracle-share S` scores what the partial oracle (`trainer.unsupervised.oracle_pseudo_labels: S`) hands the
student: a share S of the images, spread evenly over the list, carries its true labels at confidence 1, the others
the model's. Comparing it with the model alone says how far the model's pseudo-labels are from a mix that gave a
known gain (docs/demo.md, seventh round). Before the semi-supervised phase a training state's teacher has not been
set from the student yet (U2PL copies it at the switch): pass `--weights student` for the model the first
pseudo-labels will come from.
"""
import argparse
import os
import sys

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


def oracle_image(index, share):
    """Whether image `index` of the list gets its true labels: floor(n * share) of the first n images do, for every
    n, so a share of 0.4 is indices 2, 4, 7, 9 (0-based) of every 10."""
    return int((index + 1) * share + 1e-9) > int(index * share + 1e-9)


def with_oracle(prediction, confidence, label, oracle):
    """The pseudo-labels of one image under the partial oracle: its true labels at confidence 1 when `oracle`."""
    if not oracle:
        return prediction, confidence
    return label, np.ones_like(confidence)


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
    return shifted / shifted.sum(axis=0, keepdims=True)


class ThresholdScore:
    def __init__(self, threshold, num_classes):
        from ms_semiseg.eval import IoUAccumulator
        self.threshold, self.iou = threshold, IoUAccumulator(num_classes)
        self.valid = self.covered = self.correct = self.pred_background = self.true_background = 0

    def update(self, prediction, confidence, label):
        valid = label != 255
        covered = valid & (confidence >= self.threshold)
        self.valid += int(valid.sum())
        self.covered += int(covered.sum())
        self.correct += int((covered & (prediction == label)).sum())
        self.pred_background += int((covered & (prediction == 0)).sum())
        self.true_background += int((covered & (label == 0)).sum())
        self.iou.update(prediction, np.where(covered, label, 255))

    def row(self):
        share = lambda part, whole: 100.0 * part / max(whole, 1)  # noqa: E731
        return [f"{self.threshold:g}", f"{share(self.covered, self.valid):.1f}", f"{share(self.correct, self.covered):.1f}",
                f"{100 * self.iou.miou():.1f}", f"{share(self.pred_background, self.covered):.1f}",
                f"{share(self.true_background, self.covered):.1f}",
                " / ".join(f"{100 * value:.1f}" for value in self.iou.iou())]


def share(text):
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a share between 0 and 1")
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data-root", default=os.path.join(REPO_ROOT, "data", "demo"))
    parser.add_argument("--list", help="split list (default <data-root>/splits/unlabeled.txt)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.5, 0.8, 0.95])
    parser.add_argument("--limit", type=int, default=200, help="first N images of the list (default 200)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--weights", choices=("teacher", "student"), default=None,
                        help="with a training state (last.ckpt): which model (default: the teacher where there is one)")
    parser.add_argument("--oracle-share", type=share, default=0.0,
                        help="share of the images scored with their true labels (the partial oracle; default 0)")
    args = parser.parse_args()

    import ms_semiseg  # noqa: F401  (CPU kernel settings before MindSpore runs)
    from ms_semiseg.config import load_config
    from ms_semiseg.data import build_dataset, normalize
    from ms_semiseg.eval.predictor import Predictor, load_model, prepare_device
    from ms_semiseg.eval.evaluate import resolved_dataset_config
    from tqdm import tqdm

    data_root = os.path.abspath(args.data_root)
    cfg = load_config(args.config, [f"dataset.val.data_list={args.list or os.path.join(data_root, 'splits', 'unlabeled.txt')}"])
    prepare_device(args.device)
    dataset_cfg = resolved_dataset_config(cfg, data_root)
    num_classes = int(cfg["net"]["num_classes"])
    dataset = build_dataset(dataset_cfg, "val", num_classes=num_classes)
    predict = Predictor(load_model(cfg, args.ckpt, weights=args.weights))
    scores = [ThresholdScore(t, num_classes) for t in args.thresholds]
    count = min(args.limit, len(dataset))
    for index in tqdm(range(count), desc="pseudo-labels", unit="img", file=sys.stderr):
        image, label, _ = dataset[index]
        logits = predict(normalize(image, dataset_cfg["mean"], dataset_cfg["std"])[None])["pred"][0]
        probabilities = softmax(logits)
        prediction, confidence = with_oracle(probabilities.argmax(axis=0), probabilities.max(axis=0), label,
                                             oracle_image(index, args.oracle_share))
        for score in scores:
            score.update(prediction, confidence, label)
    header = ["threshold", "coverage %", "accuracy %", "mIoU %", "predicted bg %", "true bg %", "IoU per class %"]
    rows = [header] + [score.row() for score in scores]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    oracle = f", {sum(oracle_image(i, args.oracle_share) for i in range(count))} of them with their true labels" \
        if args.oracle_share else ""
    print(f"{args.ckpt} on {count} images of {dataset.list_path}{oracle}")
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))


if __name__ == "__main__":
    main()
