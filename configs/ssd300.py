"""SSD300 on VGG16, the paper's main model (Liu et al. 2016; Caffe `ssd_pascal.py`).

Variants: `--config=configs/ssd300.py` (VOC prior sizes), `--config=configs/ssd300.py:coco`
(the COCO prior sizes of Caffe's `ssd_coco.py`: min 21..261, max 45..315).
Initialisation: the ImageNet VGG16 with reduced fc6/fc7, as the paper: torchvision's `vgg16`
IMAGENET1K_FEATURES state_dict (vgg16_features-amdegroot-88682ab5.pth) or ssd.pytorch's
`vgg16_reducedfc.pth` (how to get them: README, Experiments); `--config.train.init_from=scratch`
trains from random weights instead.
Command: `python -m ssd_jax.main --config=configs/ssd300.py --workdir=<dir>
  --config.train.init_from=/path/to/vgg16_features-amdegroot-88682ab5.pth`
  (needs tfds `voc/2007` and `voc/2012` prepared under --config.data.data_dir; nothing is
  downloaded).
Reference result: VOC07+12 trainval -> VOC07 test mAP 77.2 with zoom-out augmentation.
Caffe's details throughout: MatchBBox's bipartite matching (`matching.rule`), prior sizes from
`priors.caffe_sizes` in whole pixels, hue +-36 degrees, a random resize interpolation per image.
"""

import ml_collections

from ssd_jax import priors

# (min_ratio, max_ratio, first_ratio) of the released Caffe models' prior sizes, per dataset
# (`ssd_pascal.py`, `ssd_coco.py`; `priors.caffe_sizes`): VOC 30..264 / 60..315 pixels,
# COCO 21..261 / 45..315.
_CAFFE_RATIOS = {"voc": (20, 90, 10), "coco": (15, 90, 7)}
_NUM_CLASSES = {"voc": 21, "coco": 81}  # background included

# Input data (ssd_jax/data). Split entries are (where, which) pairs whose meaning depends on the
# source: tfds: (dataset name, split); voc_folder: (folder under data_dir holding JPEGImages/,
# Annotations/ and ImageSets/Main/, image set); coco_json: (json file under data_dir, image folder
# under data_dir); synthetic: (folder under data_dir to generate into, "train" or "test").
_VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
                "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep",
                "sofa", "train", "tvmonitor")
# max_image_size: the canvas training images are padded to (M x M) and larger ones shrunk to
# fit, on the host, for the augmentation's pixel work on the device (ssd_jax.pixel_augment):
# the longest side of the dataset's images, so that none is shrunk (VOC 500, COCO 640).
_DATA = {
    "voc": dict(train_splits=(("voc/2007", "train+validation"), ("voc/2012", "train+validation")),
                eval_splits=(("voc/2007", "test"),), class_names=_VOC_CLASSES, max_image_size=500),
    "coco": dict(train_splits=(("coco/2017", "train"),), eval_splits=(("coco/2017", "validation"),),
                 class_names=ml_collections.config_dict.placeholder(tuple), max_image_size=640),
}


def _data_config(variant: str) -> ml_collections.ConfigDict:
  """config.data: where the examples come from and how they are batched."""
  data = ml_collections.ConfigDict(_DATA[variant])
  data.source = "tfds"  # tfds | voc_folder | coco_json | synthetic; nothing is ever downloaded
  # None: tfds' default ($TFDS_DATA_DIR or ~/tensorflow_datasets). A placeholder, not a plain
  # None, so that --config.data.data_dir=DIR can set it.
  data.data_dir = ml_collections.config_dict.placeholder(str)
  # Labels 1..C-1 follow class_names; None takes the dataset's own names (tfds, COCO json).
  data.train_difficult = True  # Caffe trains on VOC "difficult" objects (ssd_pascal.py)
  data.train_crowd = False  # COCO crowd boxes: left out of training, ignored by evaluation
  data.batch_size = 32  # global; each process reads batch_size / process_count per step
  data.eval_batch_size = 32
  data.max_boxes = 100  # padded ground truth per image; COCO's busiest images have fewer
  data.shuffle_buffer = 2048  # records shuffled together (in memory, with their JPEG bytes)
  data.seed = 0
  data.num_parallel_calls = -1  # -1: tf.data.AUTOTUNE
  data.prefetch = 2  # batches
  data.device_prefetch = 2  # global batches on the devices at once (the next copied during a step)
  data.on_bad_data = "skip"  # "skip": repair or skip bad images and boxes with a warning; "error"
  data.synthetic = ml_collections.ConfigDict()  # for source "synthetic"; class_names are shapes
  data.synthetic.image_size = 128
  data.synthetic.num_train = 2000
  data.synthetic.num_test = 200
  data.synthetic.max_objects = 4  # 1..max_objects per image
  data.synthetic.size_range = (0.25, 0.6)  # object side / image side
  data.synthetic.max_overlap = 0.3  # at most this fraction of an object's box covered by another
  data.synthetic.seed = 0
  return data


def _augment_config() -> ml_collections.ConfigDict:
  """config.augment: SSD's training augmentation, Caffe ssd_pascal.py's values."""
  augment = ml_collections.ConfigDict()
  augment.brightness_prob = 0.5
  augment.brightness_delta = 32.0  # added to 0..255 pixels
  augment.contrast_prob = 0.5
  augment.contrast_range = (0.5, 1.5)
  augment.saturation_prob = 0.5
  augment.saturation_range = (0.5, 1.5)
  augment.hue_prob = 0.5
  # Degrees: Caffe's hue_delta 18 is in OpenCV's 8-bit hue units (0..180), i.e. 36 degrees
  # (ssd.pytorch uses 18 degrees). Caffe's 8-bit arithmetic stops shifts below hue 0 at 0 (red)
  # rather than wrapping them; False wraps both ways.
  augment.hue_delta = 36.0
  augment.hue_clamp_below_zero = True
  augment.contrast_first_prob = 0.5  # contrast before (else after) saturation and hue
  augment.channel_swap_prob = 0.0  # Caffe's random_order_prob; ssd.pytorch swaps with p 0.5
  augment.expand_prob = 0.5  # zoom out onto a mean-filled canvas
  augment.expand_max_ratio = 4.0
  # Sampled patch: the whole image, or one of these min-IoU samplers (0 = unconstrained).
  augment.patch_whole_image = True
  augment.patch_min_ious = (0.1, 0.3, 0.5, 0.7, 0.9, 0.0)
  augment.patch_scale_range = (0.3, 1.0)
  augment.patch_aspect_range = (0.5, 2.0)
  augment.patch_max_trials = 50
  augment.flip_prob = 0.5
  # Resize interpolation, one drawn per training image (tf.image.resize names): Caffe's interp_mode
  # list LINEAR, AREA, NEAREST, CUBIC, LANCZOS4 (tf offers Lanczos of radius 3 or 5, not 4).
  # Evaluation always resizes bilinearly, as Caffe's test transform does.
  augment.resize_methods = ("bilinear", "area", "nearest", "bicubic", "lanczos3")
  return augment


def get_config(variant: str = "voc") -> ml_collections.ConfigDict:
  """Returns the SSD300 config; ``variant`` in {"voc", "coco"} picks prior sizes and classes."""
  if variant not in _CAFFE_RATIOS:
    raise ValueError(f"configs/ssd300.py: unknown variant {variant!r}; known: {sorted(_CAFFE_RATIOS)}")
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  config.model.name = "ssd300_vgg16"
  config.model.image_size = 300
  config.model.num_classes = _NUM_CLASSES[variant]
  config.model.dtype = "float32"  # compute dtype ("bfloat16": mixed precision); params float32
  config.model.width = 1.0  # channel multiplier; < 1 only for tiny test models
  # The model takes (x - input_mean) / input_std of RGB images in [0, 1]
  # (`ssd_jax.preprocess.normalize`). These are the Caffe VGG16 numbers (mean-subtracted 0-255
  # pixels, in RGB order), which torchvision's VGG16 IMAGENET1K_FEATURES and ssd300_vgg16 use.
  config.model.input_mean = (0.48235, 0.45882, 0.40784)
  config.model.input_std = (1 / 255, 1 / 255, 1 / 255)

  min_sizes, max_sizes = priors.caffe_sizes(300, 6, *_CAFFE_RATIOS[variant])
  config.priors = ml_collections.ConfigDict()
  config.priors.feature_sizes = (38, 19, 10, 5, 3, 1)
  config.priors.steps = (8, 16, 32, 64, 100, 300)
  config.priors.min_sizes = tuple(min_sizes)
  config.priors.max_sizes = tuple(max_sizes)
  config.priors.aspect_ratios = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
  config.priors.clip = False
  # Caffe's PriorBox rounds sizes down to whole pixels (no-op for SSD300's whole sizes; SSD512's
  # 35.84 -> 35). Converted Caffe weights need it; False uses the sizes as given.
  config.priors.truncate_sizes = True

  config.matching = ml_collections.ConfigDict()
  # "caffe": Caffe's MatchBBox (greedy bipartite, then IoU >= threshold), which gives every ground
  # truth its own prior; "torchvision": each ground truth forces its best prior, a later one
  # taking over a shared one (ssd_jax.matching).
  config.matching.rule = "caffe"
  config.matching.iou_threshold = 0.5
  config.matching.variances = (0.1, 0.2)

  config.loss = ml_collections.ConfigDict()
  config.loss.neg_pos_ratio = 3
  config.loss.alpha = 1.0

  # Caffe ssd_pascal.py's DetectionOutput (ssd_jax.postprocess.detect_args).
  config.detection = ml_collections.ConfigDict()
  config.detection.score_threshold = 0.01  # candidates need score > threshold
  config.detection.nms_iou_threshold = 0.45  # suppressed when IoU > threshold
  config.detection.pre_nms_top_k = 400  # per class
  config.detection.max_detections = 200  # per image

  config.data = _data_config(variant)
  config.augment = _augment_config()

  # Caffe ssd_pascal.py: SGD, lr 1e-3 at batch 32, x0.1 at 80k and 100k, 120k iterations.
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.reference_batch_size = 32  # lr scales linearly with data.batch_size
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 5e-4
  config.optimizer.bias_names = ("bias",)  # Caffe: lr_mult 2, decay_mult 0 on biases
  config.optimizer.bias_lr_multiplier = 2.0
  config.optimizer.no_decay_names = ()  # other parameter names without weight decay
  config.optimizer.schedule = "piecewise"  # or "cosine" (ignores decay_steps)
  config.optimizer.decay_steps = (80_000, 100_000)
  config.optimizer.decay_factor = 0.1
  # Not in the paper; ssd.pytorch users add it because lr 1e-3 can diverge in the first steps.
  config.optimizer.warmup_steps = 1000
  config.optimizer.warmup_init_factor = 1 / 3
  config.optimizer.grad_clip_norm = 0.0  # 0: off

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 120_000
  config.train.seed = 0  # model initialisation
  # Where the weights start: a .pth / .pt / .npz state_dict (converted on the fly, see
  # ssd_jax/convert.py for the sources), a folder written by `python -m ssd_jax.convert`, or
  # "scratch" (random weights). Left empty it is an error when requires_pretrained is set, so
  # that a published recipe never silently starts from random weights.
  config.train.init_from = ""
  config.train.requires_pretrained = True  # the paper starts from the ImageNet VGG16
  config.train.checkpoint_every = 5000
  config.train.keep_checkpoints = 3
  config.train.eval_every = 10_000
  config.train.log_every_seconds = 30.0
  config.train.skip_nonfinite = False  # True: drop non-finite updates instead of stopping
  # Steps the host may dispatch beyond the last finished one (0: it waits for each step). The
  # device then never waits for the host between steps; a larger lead only holds more batches.
  config.train.dispatch_ahead = 1
  # (start, stop): a jax.profiler trace of steps start+1..stop in <workdir>/profile; () off.
  config.train.profile_steps = ()

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data_devices = -1  # devices on the data axis; -1: all

  config.eval = ml_collections.ConfigDict()
  # voc07: VOC2007 11-point AP at IoU 0.5 (the paper's VOC numbers); voc: area under the curve
  # (VOC2010+); coco: COCO AP@[.5:.95] and friends through pycocotools.
  config.eval.metric = "coco" if variant == "coco" else "voc07"

  config.predict = ml_collections.ConfigDict()
  config.predict.score_threshold = 0.3  # drawn and listed by --mode=predict
  return config
