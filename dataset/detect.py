"""Face detection with MTCNN (Zhang et al., 2016; the networks are in dataset/mtcnn.py), computing what
facenet-pytorch's `detect_face` computes with the same weights and defaults (docs/detector.md).

1. P-Net looks at every 12x12 window, stride 2, of an image pyramid whose first level maps the
   smallest face wanted onto 12 pixels and whose levels shrink by `factor`. All levels are packed
   side by side into one canvas, so P-Net runs once per image; where a level ends, its first max-pool
   sees only the level's own pixels, so every level's cells are those P-Net gives on the level alone.
   Windows scoring >= thresholds[0] become boxes, after non-maximum suppression per level (IoU 0.5),
   then across levels (IoU 0.7), and are moved by P-Net's regression and made square.
2. Each box is cropped from the image, clipped to it, averaged down to 24x24 and scored by R-Net:
   those > thresholds[1] survive NMS (IoU 0.7) and are refined by R-Net's regression and made square.
3. The same at 48x48 with O-Net (> thresholds[2]), which also places the five landmarks; a last NMS
   divides the overlap by the smaller box ("Min", 0.7), so a box inside a bigger one goes.

Boxes are in the original implementation's pixel convention, which facenet-pytorch keeps: a box
x1..x2 crops columns max(trunc(x1), 1) - 1 .. min(trunc(x2), width) - 1, and R-Net's and O-Net's
regression count it as x2 - x1 + 1 pixels wide; landmarks are plain 0-based pixel coordinates. The box
arithmetic is float32, in the reference's order of operations, and NMS follows the rules of
torchvision's, which the reference calls, so that no window or crop lands one pixel off the
reference's. The resampling is the area average over integer bins that
torch.nn.functional.interpolate(mode="area") computes, taken for all levels and crops from one
summed-area table.
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
# torchvision's batched_nms takes another path above 4000 coordinates on the CPU, which orders tied
# scores differently; nms follows it so that ties resolve as facenet-pytorch's do.
VANILLA_NMS_ABOVE = 1000
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


def level_cells(height: int, width: int) -> tuple[int, int]:
    """(rows, cols) of P-Net's output on a level alone: its max-pool rounds up (ceil_mode), so on an
    odd side the last window reaches one pixel past the level."""
    return (height - 1) // 2 - 4, (width - 1) // 2 - 4


def pack_levels(sizes: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """((top, left) of each level, (height, width) of the canvas): shelves as wide as the two largest
    levels, filled left to right. Offsets and the room each level takes are even, so that P-Net's
    stride-2 cells of a level start on the level's first pixel and its last cell still fits."""
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


def past_odd_sides(offsets, sizes) -> list[tuple[int, int, int, int]]:
    """(row, end row, column, end column) rectangles of P-Net's conv1 output on the packed canvas that
    lie just past a level's odd side: P-Net's first max-pool (2x2, rounding up) reaches them from the
    level's last row or column, where on the level alone it finds nothing, so P-Net leaves them out."""
    rectangles = []
    for (top, left), (height, width) in zip(offsets, sizes):
        row, col = top + height - 2, left + width - 2  # conv1 has height - 2 rows on a level alone
        if height % 2:
            rectangles.append((row, row + 1, left, col + 1))
        if width % 2:
            rectangles.append((top, row + 1, col, col + 1))
    return rectangles


def window_boxes(rows, cols, scale: float) -> np.ndarray:
    """float32 [K, 4] boxes in the image of P-Net cells (row, col) of a level at `scale`, computed in
    float32 as the reference does (in float64 some corners land one pixel further)."""
    cells = np.stack([cols, rows], axis=1).astype(np.float32)
    scale = np.float32(scale)
    top_left = np.floor((STRIDE * cells + 1) / scale)
    bottom_right = np.floor((STRIDE * cells + CELL) / scale)
    return np.concatenate([top_left, bottom_right], axis=1)


def score_order(scores: np.ndarray) -> np.ndarray:
    """Indices of `scores` from best to worst, tied scores in the order torch.sort puts them (the sort
    torchvision's nms runs; it is not stable, and NMS keeps the first of two tied overlapping boxes)."""
    scores = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))
    return torch.sort(scores, descending=True).indices.numpy()


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first, by the rules of
    torchvision.ops.batched_nms on one image: float32, areas (x2 - x1) * (y2 - y1), a box goes when
    its intersection over union with a kept one exceeds `threshold`."""
    boxes = np.asarray(boxes, dtype=np.float32)
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order = score_order(scores)
    keep = []
    with np.errstate(invalid="ignore", divide="ignore"):
        while order.size:
            best, rest = order[0], order[1:]
            keep.append(best)
            overlap_w = np.maximum(np.float32(0), np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]))
            overlap_h = np.maximum(np.float32(0), np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]))
            inter = overlap_w * overlap_h
            iou = inter / (areas[best] + areas[rest] - inter)
            order = rest[~(iou.astype(np.float64) > threshold)]  # compared in double, a NaN kept: as torchvision
    keep = np.asarray(keep, dtype=np.int64)
    if len(boxes) > VANILLA_NMS_ABOVE:
        keep = np.sort(keep)
        keep = keep[score_order(np.asarray(scores)[keep])]
    return keep


def nms_min(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """The last NMS of the cascade, by the rules of the original MTCNN code that facenet-pytorch keeps
    for it ("Min"): the overlap is the intersection over the smaller area, areas count pixels
    inclusively ((x2 - x1 + 1) * (y2 - y1 + 1)), a box stays while its overlap with every kept one is
    <= `threshold` (float32); boxes are taken from the end of numpy's ascending argsort."""
    boxes = np.asarray(boxes, dtype=np.float32)
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(np.asarray(scores, dtype=np.float32))
    keep = []
    with np.errstate(invalid="ignore", divide="ignore"):
        while order.size:
            best, rest = order[-1], order[:-1]
            keep.append(best)
            overlap_w = np.maximum(np.float32(0), np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
            overlap_h = np.maximum(np.float32(0), np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
            overlap = overlap_w * overlap_h / np.minimum(areas[best], areas[rest])
            order = rest[overlap <= np.float32(threshold)]
    return np.asarray(keep, dtype=np.int64)


def regress(boxes: np.ndarray, offsets: np.ndarray, inclusive: bool = True) -> np.ndarray:
    """Boxes moved by offsets in units of their width and height (float32): counted inclusively (+1)
    for R-Net's and O-Net's offsets, as a plain difference for P-Net's, as the reference computes them."""
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    if inclusive:
        width, height = width + 1, height + 1
    return (boxes + offsets * np.stack([width, height, width, height], axis=1)).astype(np.float32)


def square(boxes: np.ndarray) -> np.ndarray:
    """Each box widened to a square of side max(width, height) about the same centre (float32, in the
    reference's order: x1 + w / 2 - side / 2, then x1 + side)."""
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(width, height)
    x1 = boxes[:, 0] + width * 0.5 - side * 0.5
    y1 = boxes[:, 1] + height * 0.5 - side * 0.5
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1).astype(np.float32)


def crop_regions(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts [K, 2] x, y; lengths [K, 2] width, height) of the pixels cropped for each box: its
    corners truncated and clipped to the image, columns max(trunc(x1), 1) - 1 .. min(trunc(x2), width)
    - 1 inclusive, rows alike. A length <= 0 means that the box holds no pixel of the image."""
    corners = np.trunc(boxes[:, :4]).astype(np.int64)
    first = np.maximum(corners[:, :2], 1)
    last = np.minimum(corners[:, 2:], [width, height])
    return first - 1, last - first + 1


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
        # times faster on it (tools/bench/benchmark_detect.py times the detector).
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
        landmarks = np.zeros((0, 5, 2), dtype=np.float32)
        if len(boxes):
            boxes, scores, landmarks = self._output(table, boxes, thresholds[2])
        return boxes.astype(np.float32), scores.astype(np.float32), landmarks.astype(np.float32)

    def _propose(self, table, min_face_size, factor, threshold):
        """Stage 1: square boxes [K, 4] and P-Net scores [K] from the packed pyramid."""
        height, width = table.shape[0] - 1, table.shape[1] - 1
        scales = pyramid_scales(height, width, min_face_size, factor)
        if not scales:
            return np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.float32)
        sizes = [level_size(height, width, s) for s in scales]
        offsets, canvas_size = pack_levels(sizes)
        canvas = torch.zeros((*canvas_size, 3), device=self.device)
        cell_rows, cell_cols = level_cells(*canvas_size)
        level_of_cell = torch.full((cell_rows, cell_cols), -1, dtype=torch.long, device=self.device)
        whole = np.array([[0, 0]]), np.array([[width, height]])
        for level, ((top, left), (level_h, level_w)) in enumerate(zip(offsets, sizes)):
            resized = area_resample(table, *whole, (level_h, level_w))[0]
            canvas[top:top + level_h, left:left + level_w] = (resized - 127.5) * 0.0078125
            rows, cols = level_cells(level_h, level_w)
            level_of_cell[top // 2:top // 2 + rows, left // 2:left // 2 + cols] = level
        offsets_map, probability = self.pnet(canvas.permute(2, 0, 1)[None], past_odd_sides(offsets, sizes))
        hits = torch.nonzero((probability[0] >= threshold) & (level_of_cell >= 0))
        rows, cols = hits[:, 0], hits[:, 1]
        found_scores = probability[0, rows, cols].float().cpu().numpy()
        found_offsets = offsets_map[0, :, rows, cols].T.float().cpu().numpy()
        levels = level_of_cell[rows, cols].cpu().numpy()
        rows, cols = rows.cpu().numpy(), cols.cpu().numpy()
        # Level by level, each in row-major order, as the reference meets them; per-level NMS, its
        # survivors in that order, then NMS across levels.
        boxes, picks = np.zeros((len(levels), 4), dtype=np.float32), []
        for level in np.unique(levels):
            at = np.flatnonzero(levels == level)
            top, left = offsets[level]
            boxes[at] = window_boxes(rows[at] - top // 2, cols[at] - left // 2, scales[level])
            picks.append(at[nms(boxes[at], found_scores[at], 0.5)])
        picks = np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)
        picks = picks[nms(boxes[picks], found_scores[picks], 0.7)]
        boxes = regress(boxes[picks], found_offsets[picks], inclusive=False)
        return square(boxes), found_scores[picks]

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
        keep = nms_min(boxes, scores, 0.7)
        return boxes[keep], scores[keep], landmarks[keep]

    def _run(self, net, table, boxes, size):
        """The outputs of `net` (numpy float32, scores last) on the `size`x`size` crops of `boxes`. A box
        that holds no pixel of the image scores 0 (the reference would fail on it)."""
        starts, lengths = crop_regions(boxes, table.shape[0] - 1, table.shape[1] - 1)
        inside = np.flatnonzero((lengths > 0).all(axis=1))
        outputs = []
        for first in range(0, len(inside), REFINE_BATCH):
            part = inside[first:first + REFINE_BATCH]
            crops = area_resample(table, starts[part], lengths[part], (size, size))
            outputs.append([o.float().cpu().numpy() for o in net(((crops - 127.5) * 0.0078125).permute(0, 3, 1, 2))])
        widths = (4, 10, 1) if net is self.onet else (4, 1)
        results = [np.zeros((len(boxes), w), dtype=np.float32) for w in widths]
        for result, column in zip(results, zip(*outputs)):
            result[inside] = np.concatenate(column).reshape(len(inside), -1)
        return [r if r.shape[1] > 1 else r[:, 0] for r in results]


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
    (rows, cols), bit for bit what torch's area interpolation gives on the image as float32 while a bin
    sums to less than 2^24 (its float32 sums are exact up to there); pixels outside the image count
    as zeros."""
    table_rows, table_cols = table.shape[:2]
    y0, y1 = crop_bins(starts[:, 1], lengths[:, 1], size[0])
    x0, x1 = crop_bins(starts[:, 0], lengths[:, 0], size[1])
    bin_rows = torch.from_numpy((y1 - y0).astype(np.float32)).to(table.device)[:, :, None, None]
    bin_cols = torch.from_numpy((x1 - x0).astype(np.float32)).to(table.device)[:, None, :, None]
    # Clamping to the table's edge is what makes outside pixels zero. One flat index per corner:
    # index_select on a [N, 3] view is much faster than indexing [H, W, 3] with two broadcast indices.
    y0, y1 = (np.clip(y, 0, table_rows - 1) * table_cols for y in (y0, y1))
    x0, x1 = (np.clip(x, 0, table_cols - 1) for x in (x0, x1))
    flat = table.view(-1, 3)

    def corner(rows, cols):
        index = torch.from_numpy((rows[:, :, None] + cols[:, None, :]).ravel()).to(table.device)
        return flat.index_select(0, index)
    sums = corner(y1, x1) - corner(y0, x1) - corner(y1, x0) + corner(y0, x0)
    # Divided by the bin's rows, then by its columns: the two roundings torch's kernel makes.
    return sums.view(len(starts), size[0], size[1], 3).float() / bin_rows / bin_cols


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
