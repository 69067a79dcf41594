"""Parity with PyTorch references (runs only where torch and torchvision are installed: the
``convert`` extra): torchvision's ssd300_vgg16 converted and run side by side, its anchors and
input normalisation, the VGG16, ResNet-34/50 and MobileNetV2 classifier imports against
torchvision's feature maps, and the parameter counts of our other architectures against the same
structures built from torchvision modules. Every torchvision model is built with weights=None:
nothing is downloaded."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import test_convert
from ssd_jax import boxes, checkpoint, config_utils, convert, models, preprocess, priors

torch = pytest.importorskip("torch", reason="needs torch (the `convert` extra)")
torchvision = pytest.importorskip("torchvision", reason="needs torchvision (the `convert` extra)")
# pylint: disable=g-import-not-at-top,wrong-import-position
from torch import nn
from torchvision.models.detection import anchor_utils, image_list, ssd, ssdlite
# pylint: enable=g-import-not-at-top,wrong-import-position

ROOT = os.path.join(os.path.dirname(__file__), "..")


def load(name: str):
  return config_utils.load_config(os.path.join(ROOT, "configs", name + ".py"))


def _shapes(model) -> dict:
  """The model's weights (params and BatchNorm statistics) as shape placeholders."""
  return checkpoint.flat_weights(model)


def import_model(config, state_dict) -> models.SSD:
  """Our model of ``config`` holding the converted ``state_dict``; weights it lacks are ones."""
  model = nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))
  numpy_state = {k: v.detach().numpy() if torch.is_tensor(v) else v for k, v in state_dict.items()}
  values = convert.convert_state_dict(numpy_state, _shapes(model), config.model.name)
  checkpoint.set_weights(model, {k: v if isinstance(v, np.ndarray) else np.ones(v.shape, v.dtype)
                                for k, v in values.items()})
  return model


def count(*modules) -> int:
  return sum(p.numel() for m in modules for p in m.parameters())


def our_count(config) -> int:
  model = nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_torchvision_ssd300_vgg16_parity(tmp_path):
  torch.manual_seed(0)
  reference = ssd.ssd300_vgg16(weights=None, weights_backbone=None).eval()
  with torch.no_grad():  # biases are 0 and the L2Norm scale 20 at init: perturb every tensor
    for param in reference.parameters():
      if param.ndim == 1:
        param.add_(0.1 * torch.randn_like(param))
  config = load("ssd300_torchvision_coco")
  # The whole path: .pth -> orbax checkpoint -> checkpoint.load_weights into a fresh model.
  torch.save(reference.state_dict(), tmp_path / "ssd300.pth")
  convert.convert_file(config, str(tmp_path / "ssd300.pth"), str(tmp_path / "ckpt"))
  model = nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))
  checkpoint.set_weights(model, {k: np.zeros(v.shape, v.dtype)
                                for k, v in _shapes(model).items()})
  checkpoint.load_weights(str(tmp_path / "ckpt"), model)
  model.eval()

  images = torch.rand(2, 3, 300, 300)
  # torchvision's own transform (resize to 300, normalise) == our config's normalisation.
  transformed = reference.transform(list(images))[0].tensors
  ours = preprocess.normalize(jnp.asarray(images.permute(0, 2, 3, 1).numpy()) * 255.0,
                              config.model.input_mean, config.model.input_std)
  np.testing.assert_allclose(ours, transformed.permute(0, 2, 3, 1).numpy(), atol=1e-3)

  with torch.no_grad():
    features = list(reference.backbone(transformed).values())
    head = reference.head(features)
  out = nnx.jit(lambda m, x: m(x))(model, ours)
  assert float(jnp.max(jnp.abs(out.loc - head["bbox_regression"].numpy()))) < 1e-4
  assert float(jnp.max(jnp.abs(out.logits - head["cls_logits"].numpy()))) < 1e-4

  # torchvision decodes (dx, dy, dw, dh) / (10, 10, 5, 5) against its anchors: the same boxes,
  # except that it clamps dw, dh at log(1000 / 16) (only random weights get there).
  anchors = _anchors(reference.anchor_generator, features, 300)
  decoded = reference.box_coder.decode_single(head["bbox_regression"][0], anchors).numpy()
  anchors_cxcywh = boxes.xyxy_to_cxcywh(jnp.asarray(anchors.numpy()) / 300)
  ours = np.asarray(boxes.decode(out.loc[0], anchors_cxcywh)) * 300
  unclamped = np.all(np.asarray(out.loc[0, :, 2:]) / 5 < np.log(1000 / 16), axis=-1)
  assert unclamped.mean() > 0.9
  # 0.01 px, plus float32's relative rounding for the boxes that random weights throw 2000 px out.
  np.testing.assert_allclose(ours[unclamped], decoded[unclamped], rtol=1e-5, atol=1e-2)


def _anchors(generator, features, size: int):
  """torchvision's anchors (xyxy pixels) for one image of ``size`` pixels."""
  batch = torch.zeros(1, 3, size, size)
  return generator(image_list.ImageList(batch, [(size, size)]), features)[0]


def test_torchvision_coco_priors_match_anchors():
  config = load("ssd300_torchvision_coco")
  generator = ssd.ssd300_vgg16(weights=None, weights_backbone=None).anchor_generator
  features = [torch.zeros(1, 1, s, s) for s in config.priors.feature_sizes]
  np.testing.assert_allclose(boxes.cxcywh_to_xyxy(jnp.asarray(priors.from_config(config))) * 300,
                             _anchors(generator, features, 300).numpy(), atol=1e-3)


def test_torchvision_vgg16_imagenet_import():
  torch.manual_seed(0)
  vgg = torchvision.models.vgg16().eval()
  config = load("ssd300")
  model = import_model(config, vgg.state_dict())
  model.eval()
  flat = checkpoint.flat_weights(model)
  fc6 = vgg.classifier[0].weight.detach().numpy().reshape(4096, 512, 7, 7)
  np.testing.assert_array_equal(flat["backbone/fc6/kernel"][2, 1, 7], fc6[::4, 7, 6, 3])
  images = torch.randn(1, 3, 300, 300)
  with torch.no_grad():  # conv4_3 after ceil-mode pool3, through the L2Norm (scale 1 here)
    vgg.features[16].ceil_mode = True
    conv4_3 = nn.functional.normalize(vgg.features[:23](images))
  out = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(images.permute(0, 2, 3, 1).numpy()))
  np.testing.assert_allclose(out.features[0], conv4_3.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_ssdlite_priors_match_torchvision_anchors():
  config = load("ssdlite_mobilenetv2")
  generator = anchor_utils.DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)
  features = [torch.zeros(1, 1, s, s) for s in config.priors.feature_sizes]
  np.testing.assert_allclose(boxes.cxcywh_to_xyxy(jnp.asarray(priors.from_config(config))) * 320,
                             _anchors(generator, features, 320).numpy(), atol=1e-3)


def _nvidia_ssd300_count(backbone, channels, num_classes: int = 21) -> int:
  """NVIDIA SSD300 v1.1 / MLPerf: ResNet up to layer3, BN extras, 3x3 heads."""
  extras = []
  for cin, cout, mid in zip(channels[:-1], channels[1:], (256, 256, 128, 128, 128)):
    extras += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid),
               nn.Conv2d(mid, cout, 3, bias=False), nn.BatchNorm2d(cout)]
  heads = [nn.Conv2d(c, k * d, 3, padding=1)
           for k, c in zip((4, 6, 6, 6, 4, 4), channels) for d in (4, num_classes)]
  return count(*list(backbone.children())[:7], *extras, *heads)


def test_resnet_parameter_counts_match_torch_structure():
  assert our_count(load("ssd300_resnet34")) == _nvidia_ssd300_count(
      torchvision.models.resnet34(), (256, 512, 512, 256, 256, 256))
  assert our_count(load("ssd300_resnet50")) == _nvidia_ssd300_count(
      torchvision.models.resnet50(), (1024, 512, 512, 256, 256, 256))


def test_ssdlite_and_ssd512_parameter_counts_match_torch_structure():
  norm = functools.partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
  features = torchvision.models.mobilenet_v2(norm_layer=norm).features
  extras = [ssdlite._extra_block(cin, cout, norm)  # pylint: disable=protected-access
            for cin, cout in ((1280, 512), (512, 256), (256, 256), (256, 128))]
  head = ssdlite.SSDLiteHead([576, 1280, 512, 256, 256, 128], [6] * 6, 21, norm)
  assert our_count(load("ssdlite_mobilenetv2")) == count(features[:18], features[18], *extras,
                                                         head)
  extractor = ssd.SSDFeatureExtractorVGG(torchvision.models.vgg16().features, highres=True)
  head = ssd.SSDHead([512, 1024, 512, 256, 256, 256, 256], [4, 6, 6, 6, 6, 4, 4], 21)
  assert our_count(load("ssd512")) == count(extractor, head)


def _perturb_batchnorm(net: nn.Module) -> None:
  """BatchNorm starts at scale 1, bias 0, mean 0, var 1: give every one distinct statistics."""
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0, 0.1)
        module.running_mean.normal_(0, 0.1)
        module.running_var.uniform_(0.5, 1.5)


def _shapes_of(state_dict) -> dict[str, tuple]:
  return {key: tuple(value.shape) for key, value in state_dict.items()}


def _assert_close(ours, theirs) -> None:
  """NHWC ours against NCHW torch, relative to the map's magnitude (float32 sums of ~1e3 terms)."""
  theirs = theirs.permute(0, 2, 3, 1).numpy()
  scale = float(np.max(np.abs(theirs)))
  assert scale > 0
  np.testing.assert_allclose(np.asarray(ours, np.float32) / scale, theirs / scale, atol=1e-5)


@pytest.mark.parametrize("config_name, depth", [("ssd300_resnet34", "resnet34"),
                                                ("ssd300_resnet50", "resnet50")])
def test_torchvision_resnet_import(config_name, depth):
  torch.manual_seed(0)
  net = getattr(torchvision.models, depth)(weights=None).eval()
  # The CI test's hand-written key table is torchvision's.
  assert _shapes_of(test_convert.torchvision_resnet(depth).state) == _shapes_of(net.state_dict())
  _perturb_batchnorm(net)
  model = import_model(load(config_name), net.state_dict())
  model.eval()
  # NVIDIA's SSD300 runs layer3 at stride 1 (strided conv: conv1 in a BasicBlock, conv2 in a
  # v1.5 Bottleneck); the weights are the same.
  block = net.layer3[0]
  (block.conv2 if depth == "resnet50" else block.conv1).stride = (1, 1)
  block.downsample[0].stride = (1, 1)
  images = torch.randn(2, 3, 300, 300)
  with torch.no_grad():
    x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
    layer3 = net.layer3(net.layer2(net.layer1(x)))
  assert layer3.shape[-2:] == (38, 38)
  out = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(images.permute(0, 2, 3, 1).numpy()))
  _assert_close(out.features[0], layer3)


def test_torchvision_mobilenet_v2_import(tmp_path):
  torch.manual_seed(0)
  assert (_shapes_of(test_convert.torchvision_mobilenet_v2().state)
          == _shapes_of(torchvision.models.mobilenet_v2(weights=None).state_dict()))
  # SSDLite's BatchNorm epsilon (1e-3, ours and torchvision's SSDLite) on the same weights.
  norm = functools.partial(nn.BatchNorm2d, eps=0.001)
  net = torchvision.models.mobilenet_v2(weights=None, norm_layer=norm).eval()
  _perturb_batchnorm(net)
  torch.save(net.state_dict(), tmp_path / "mobilenet_v2.pth")  # read back as init_from reads it
  model = import_model(load("ssdlite_mobilenetv2"),
                       convert.read_state_dict(str(tmp_path / "mobilenet_v2.pth")))
  model.eval()
  images = torch.randn(2, 3, 320, 320)
  with torch.no_grad():  # sources: the expansion of features[14] (stride 16), then features[18]
    expansion = net.features[14].conv[0](net.features[:14](images))
    last = net.features(images)
  out = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(images.permute(0, 2, 3, 1).numpy()))
  _assert_close(out.features[0], expansion)
  _assert_close(out.features[1], last)
