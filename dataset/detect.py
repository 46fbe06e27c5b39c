"""Face detection with MTCNN (Zhang et al., 2016; the networks are in dataset/mtcnn.py).

1. P-Net looks at every 12x12 window, stride 2, of an image pyramid whose first level maps the
   smallest face wanted onto 12 pixels and whose levels shrink by `factor`. All levels are packed
   side by side into one canvas, so P-Net runs once per image; a window counts only when it lies
   inside one level. Windows scoring >= thresholds[0] become boxes, offset by P-Net's regression,
   after non-maximum suppression per level (IoU 0.5) and then across levels (IoU 0.7).
2. Each box, made square, is cropped from the image (zero outside it, as the original MTCNN pads),
   averaged down to 24x24 and scored by R-Net: those > thresholds[1] survive NMS (IoU 0.7) and are
   refined by R-Net's regression.
3. The same at 48x48 with O-Net (> thresholds[2]), which also places the five landmarks; a last NMS
   divides the overlap by the smaller box ("Min", 0.7), so a box inside a bigger one goes.

Boxes are in the original implementation's pixel convention (a box x1..x2 spans x2 - x1 + 1 pixels
and crops columns trunc(x1) - 1 .. trunc(x2) - 1), which facenet-pytorch keeps as well; landmarks are
plain 0-based pixel coordinates. The crops are area averages over integer bins (what
torch.nn.functional.interpolate(mode="area") computes), taken for all boxes at once from a summed-area
table.
"""

import math

import cv2
import numpy as np
import torch

from runtime import resolve_device

from .mtcnn import load_nets

DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)
CELL, STRIDE = 12, 2      # P-Net's window and step, in pixels of a pyramid level
REFINE_BATCH = 512        # crops per R-Net / O-Net call, bounding the memory of a crowded image
_DETECTORS = {}           # (device, weights folder) -> Detector: the weights load once per process


def pyramid_scales(height: int, width: int, min_face_size: float = 20, factor: float = 0.709) -> list[float]:
    """Scale of each pyramid level: the first maps `min_face_size` onto P-Net's 12-pixel window, each
    next one is `factor` times smaller, down to the last whose shorter side still holds a window."""
    scale = CELL / min_face_size
    side = min(height, width) * scale
    scales = []
    while side >= CELL:
        scales.append(scale)
        scale *= factor
        side *= factor
    return scales


def level_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return int(height * scale + 1), int(width * scale + 1)


def pack_levels(sizes: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """((top, left) of each level, (height, width) of the canvas): shelves as wide as the two largest
    levels, filled left to right. Offsets are even so that P-Net's stride-2 cells of a level start
    on the level's first pixel."""
    def even(value):
        return value + value % 2
    width = even(sizes[0][1]) + (even(sizes[1][1]) if len(sizes) > 1 else 0)
    offsets, top, left, shelf = [], 0, 0, 0
    for height, level_width in sizes:
        if left + level_width > width:
            top, left, shelf = top + shelf, 0, 0
        offsets.append((top, left))
        left += even(level_width)
        shelf = max(shelf, even(height))
    return offsets, (top + shelf, width)


def window_boxes(rows, cols, scale: float) -> np.ndarray:
    """float64 [K, 4] boxes in the image of P-Net cells (row, col) of a level at `scale`."""
    cells = np.stack([cols, rows], axis=1).astype(np.float64)
    top_left = np.floor((STRIDE * cells + 1) / scale)
    bottom_right = np.floor((STRIDE * cells + CELL) / scale)
    return np.concatenate([top_left, bottom_right], axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first: a box goes when
    its overlap with a kept one exceeds `threshold`; overlap is intersection over union, or over
    the smaller area with mode "min". Areas count pixels inclusively (x2 - x1 + 1)."""
    if mode not in ("union", "min"):
        raise ValueError(f"nms mode {mode!r}; valid: union, min")
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        overlap_w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        overlap_h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = overlap_w * overlap_h
        base = np.minimum(areas[best], areas[rest]) if mode == "min" else areas[best] + areas[rest] - inter
        order = rest[inter / base <= threshold]
    return np.asarray(keep, dtype=np.int64)


def grouped_nms(boxes, scores, groups, threshold: float, mode: str = "union") -> np.ndarray:
    """nms within each group (pyramid level) separately; indices into the inputs, best score first."""
    kept = [np.flatnonzero(groups == g)[nms(boxes[groups == g], scores[groups == g], threshold, mode)]
            for g in np.unique(groups)]
    kept = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    return kept[np.argsort(-scores[kept], kind="stable")]


def regress(boxes: np.ndarray, offsets: np.ndarray, inclusive: bool = True) -> np.ndarray:
    """Boxes moved by offsets in units of their width and height: counted inclusively (+1) for R-Net's
    and O-Net's offsets, as a plain difference for P-Net's, as the reference computes them."""
    extra = 1.0 if inclusive else 0.0
    size = np.stack([boxes[:, 2] - boxes[:, 0] + extra, boxes[:, 3] - boxes[:, 1] + extra], axis=1)
    return boxes + offsets * np.tile(size, 2)


def square(boxes: np.ndarray) -> np.ndarray:
    """Each box widened to a square of side max(width, height) about the same centre."""
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(width, height)
    x1 = boxes[:, 0] + (width - side) / 2
    y1 = boxes[:, 1] + (height - side) / 2
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1)


def crop_bins(starts: np.ndarray, lengths: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """([K, size] first, [K, size] past-the-end pixel) of the area-resampling bins that take `lengths`
    pixels from `starts` down (or up) to `size`: bin k spans floor(k n / size) .. ceil((k+1) n / size)."""
    k = np.arange(size)
    n = lengths[:, None]
    return starts[:, None] + (k * n) // size, starts[:, None] - ((-(k + 1) * n) // size)


class Detector:
    """MTCNN's three networks on one device, and the cascade that runs them on an image."""

    def __init__(self, device="cpu", weights_folder=None):
        self.device = torch.device(device)
        # channels_last: PyTorch's CPU pooling and convolution kernels for these small nets are several
        # times faster on it (tools/benchmark_detect.py times the detector).
        self.pnet, self.rnet, self.onet = (net.to(self.device, memory_format=torch.channels_last)
                                           for net in load_nets(weights_folder))

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, min_face_size: float = 20, factor: float = 0.709,
                 thresholds=DEFAULT_THRESHOLDS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image = _check_image(image)
        _check_settings(min_face_size, factor, thresholds)
        table = summed_area_table(image, self.device)
        boxes, scores = self._propose(table, min_face_size, factor, thresholds[0])
        if len(boxes):
            boxes, scores = self._refine(table, boxes, thresholds[1])
        landmarks = np.zeros((0, 5, 2))
        if len(boxes):
            boxes, scores, landmarks = self._output(table, boxes, thresholds[2])
        return boxes.astype(np.float32), scores.astype(np.float32), landmarks.astype(np.float32)

    def _propose(self, table, min_face_size, factor, threshold):
        """Stage 1: square boxes [K, 4] and P-Net scores [K] from the packed pyramid."""
        height, width = table.shape[0] - 1, table.shape[1] - 1
        scales = pyramid_scales(height, width, min_face_size, factor)
        if not scales:
            return np.zeros((0, 4)), np.zeros(0)
        sizes = [level_size(height, width, s) for s in scales]
        offsets, canvas_size = pack_levels(sizes)
        canvas = torch.zeros((*canvas_size, 3), device=self.device)
        cell_rows, cell_cols = (canvas_size[0] - CELL) // STRIDE + 1, (canvas_size[1] - CELL) // STRIDE + 1
        level_of_cell = torch.full((cell_rows, cell_cols), -1, dtype=torch.long, device=self.device)
        whole = np.array([[0, 0]]), np.array([[width, height]])
        for level, ((top, left), (level_h, level_w)) in enumerate(zip(offsets, sizes)):
            resized = area_resample(table, *whole, (level_h, level_w))[0]
            canvas[top:top + level_h, left:left + level_w] = (resized - 127.5) * 0.0078125
            # Cells whose whole window lies inside this level.
            level_of_cell[top // 2:(top + level_h - CELL) // 2 + 1, left // 2:(left + level_w - CELL) // 2 + 1] = level
        offsets_map, probability = self.pnet(canvas.permute(2, 0, 1)[None])
        hits = torch.nonzero((probability[0] >= threshold) & (level_of_cell >= 0))
        rows, cols = hits[:, 0], hits[:, 1]
        found_scores = probability[0, rows, cols].double().cpu().numpy()
        found_offsets = offsets_map[0, :, rows, cols].T.double().cpu().numpy()
        levels = level_of_cell[rows, cols].cpu().numpy()
        rows, cols = rows.cpu().numpy(), cols.cpu().numpy()
        boxes = np.zeros((len(levels), 4))
        for level in np.unique(levels):
            at = levels == level
            top, left = offsets[level]
            boxes[at] = window_boxes(rows[at] - top // 2, cols[at] - left // 2, scales[level])
        keep = grouped_nms(boxes, found_scores, levels, 0.5)
        keep = keep[nms(boxes[keep], found_scores[keep], 0.7)]
        boxes = regress(boxes[keep], found_offsets[keep], inclusive=False)
        return square(boxes), found_scores[keep]

    def _refine(self, table, boxes, threshold):
        """Stage 2: the R-Net survivors, regressed and squared."""
        offsets, scores = self._run(self.rnet, table, boxes, 24)
        passed = scores > threshold
        boxes, offsets, scores = boxes[passed], offsets[passed], scores[passed]
        keep = nms(boxes, scores, 0.7)
        return square(regress(boxes[keep], offsets[keep])), scores[keep]

    def _output(self, table, boxes, threshold):
        """Stage 3: O-Net's boxes, scores and landmarks [K, 5, 2], best score first."""
        offsets, points, scores = self._run(self.onet, table, boxes, 48)
        passed = scores > threshold
        boxes, offsets, points, scores = boxes[passed], offsets[passed], points[passed], scores[passed]
        width = boxes[:, 2:3] - boxes[:, 0:1] + 1
        height = boxes[:, 3:4] - boxes[:, 1:2] + 1
        landmarks = np.stack([width * points[:, :5] + boxes[:, 0:1] - 1,
                              height * points[:, 5:] + boxes[:, 1:2] - 1], axis=2)
        boxes = regress(boxes, offsets)
        keep = nms(boxes, scores, 0.7, mode="min")
        return boxes[keep], scores[keep], landmarks[keep]

    def _run(self, net, table, boxes, size):
        """The outputs of `net` (numpy float64, scores last) on the `size`x`size` crops of `boxes`.
        A box whose truncated corners hold no pixel gets a one-pixel crop, so none is dropped."""
        starts = np.trunc(boxes[:, :2]).astype(np.int64) - 1
        lengths = np.maximum(np.trunc(boxes[:, 2:]).astype(np.int64) - starts, 1)
        outputs = []
        for first in range(0, len(boxes), REFINE_BATCH):
            part = slice(first, first + REFINE_BATCH)
            crops = area_resample(table, starts[part], lengths[part], (size, size))
            outputs.append([o.double().cpu().numpy() for o in net(((crops - 127.5) * 0.0078125).permute(0, 3, 1, 2))])
        return [np.concatenate(column) for column in zip(*outputs)]


def summed_area_table(image: np.ndarray, device) -> torch.Tensor:
    """[H+1, W+1, 3] sums of image[:y, :x] on `device`, exact: int32, or float64 where int32 could
    overflow. cv2.integral on the CPU; cumulative_sums elsewhere, where that is fast."""
    dtype = torch.int32 if 255 * image.shape[0] * image.shape[1] < 2 ** 31 else torch.float64
    if torch.device(device).type == "cpu":
        return torch.from_numpy(cv2.integral(image, sdepth=cv2.CV_32S if dtype == torch.int32 else cv2.CV_64F))
    return cumulative_sums(torch.from_numpy(np.ascontiguousarray(image)).to(device), dtype)


def cumulative_sums(pixels: torch.Tensor, dtype) -> torch.Tensor:
    """The summed-area table of uint8 [H, W, 3] `pixels` with torch operations, in `dtype`."""
    table = torch.zeros((pixels.shape[0] + 1, pixels.shape[1] + 1, 3), dtype=dtype, device=pixels.device)
    table[1:, 1:] = pixels.to(dtype).cumsum(0, dtype=dtype).cumsum(1, dtype=dtype)
    return table


def area_resample(table: torch.Tensor, starts: np.ndarray, lengths: np.ndarray, size) -> torch.Tensor:
    """float32 [K, rows, cols, 3]: the regions at (x, y) = `starts`, (width, height) = `lengths` (numpy
    int [K, 2]) of the image summed in `table`, each averaged over its area bins down (or up) to `size`
    (rows, cols); pixels outside the image count as zeros."""
    table_rows, table_cols = table.shape[:2]
    y0, y1 = crop_bins(starts[:, 1], lengths[:, 1], size[0])
    x0, x1 = crop_bins(starts[:, 0], lengths[:, 0], size[1])
    area = torch.from_numpy(((y1 - y0)[:, :, None] * (x1 - x0)[:, None, :]).astype(np.float32))
    # Clamping to the table's edge is what makes outside pixels zero. One flat index per corner:
    # index_select on a [N, 3] view is much faster than indexing [H, W, 3] with two broadcast indices.
    y0, y1 = (np.clip(y, 0, table_rows - 1) * table_cols for y in (y0, y1))
    x0, x1 = (np.clip(x, 0, table_cols - 1) for x in (x0, x1))
    flat = table.view(-1, 3)

    def corner(rows, cols):
        index = torch.from_numpy((rows[:, :, None] + cols[:, None, :]).ravel()).to(table.device)
        return flat.index_select(0, index)
    sums = corner(y1, x1) - corner(y0, x1) - corner(y1, x0) + corner(y0, x0)
    return sums.view(*area.shape, 3).float() / area.to(table.device)[..., None]


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be RGB uint8 [H, W, 3], got {image.dtype} of shape {image.shape}")
    return np.ascontiguousarray(image)  # a view such as image[:, ::-1] has strides cv2.integral refuses


def _check_settings(min_face_size, factor, thresholds) -> None:
    if not (isinstance(min_face_size, (int, float)) and math.isfinite(min_face_size) and min_face_size > 0):
        raise ValueError(f"min_face_size must be a positive number of pixels, got {min_face_size!r}")
    if not (isinstance(factor, (int, float)) and 0 < factor < 1):
        raise ValueError(f"factor must be in (0, 1) (each pyramid level is that much smaller), got {factor!r}")
    if len(thresholds) != 3 or not all(0 <= t <= 1 for t in thresholds):
        raise ValueError(f"thresholds must be three probabilities (P-Net, R-Net, O-Net), got {thresholds!r}")


def detector(device="cpu", weights_folder=None) -> Detector:
    """The process's Detector for `device` ("auto", "cpu", "cuda", "cuda:N"), built on first use."""
    resolved = resolve_device(device)
    key = (str(resolved), weights_folder)
    if key not in _DETECTORS:
        _DETECTORS[key] = Detector(resolved, weights_folder)
    return _DETECTORS[key]


def detect_faces(image: np.ndarray, min_face_size: float = 20, factor: float = 0.709,
                 thresholds=DEFAULT_THRESHOLDS, device="auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes float32 [K, 4] x1, y1, x2, y2; scores [K]; landmarks [K, 5, 2] x, y of the left eye,
    right eye, nose, left and right mouth corner) of every face in an RGB uint8 [H, W, 3] image, best
    score first. `device` "auto" computes on the GPU when torch sees one; the weights load once."""
    return detector(device)(image, min_face_size, factor, thresholds)


def face_sizes(boxes: np.ndarray) -> np.ndarray:
    """The side of each box in pixels: the larger of its width and height."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def largest_face(boxes: np.ndarray) -> int:
    """Index of the box of largest area (the first of equals), for photos meant to show one person."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not len(boxes):
        raise ValueError("no boxes: no face was found")
    return int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
