// CPU implementations of the torchvision operators that torchvision's detection models call from
// TorchScript (`torchvision::nms`, `torchvision::roi_align` and the latter's backward
// `torchvision::_roi_align_backward`), registered with libtorch's dispatcher under torchvision's
// own schemas (those of torchvision 0.14), so that a TorchScript tail exported from Faster R-CNN,
// Mask R-CNN, Keypoint R-CNN, RetinaNet, FCOS or SSD loads and runs in featjnd's lean libtorch
// without torchvision's `_C.so`.
//
// Written for featjnd from the operators' definitions (see docs/torchvision-ops.md); CPU only.
// Registration is explicit: Rust calls `featjnd_register_torchvision_ops` once before loading a
// TorchScript file (no static registrar, so nothing depends on the linker keeping an unreferenced
// object), and it registers nothing when the operators already exist in the process (for example
// when torchvision's own library was loaded).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

namespace {

// ------------------------------------------------------------------------------------------------
// nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor
//
// Greedy non-maximum suppression: visit the boxes by descending score (equal scores in index
// order; NaN counts as the highest score, as in torch.sort), keep a box unless an already kept box
// overlaps it with IoU > iou_threshold. Boxes are (x1, y1, x2, y2) with x1 <= x2, y1 <= y2;
// area = (x2 - x1) * (y2 - y1) (no +1). Returns the kept indices (int64) by descending score.

template <typename T>
bool score_before(T a, T b) {
  if (std::isnan(a)) return !std::isnan(b);
  if (std::isnan(b)) return false;
  return a > b;
}

at::Tensor nms_cpu(const at::Tensor& dets, const at::Tensor& scores, double iou_threshold) {
  TORCH_CHECK(dets.device().is_cpu() && scores.device().is_cpu(),
              "torchvision::nms (featjnd): only CPU tensors are supported, got ", dets.device());
  TORCH_CHECK(dets.dim() == 2 && dets.size(1) == 4, "torchvision::nms (featjnd): boxes must be [N, 4], got ",
              dets.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == dets.size(0),
              "torchvision::nms (featjnd): scores must be [N] with N = ", dets.size(0), ", got ", scores.sizes());
  TORCH_CHECK(dets.scalar_type() == scores.scalar_type(), "torchvision::nms (featjnd): boxes are ",
              dets.scalar_type(), " but scores are ", scores.scalar_type());
  const int64_t n = dets.size(0);
  at::Tensor keep = at::empty({n}, dets.options().dtype(at::kLong));
  if (n == 0) return keep;
  const at::Tensor d = dets.contiguous();
  const at::Tensor s = scores.contiguous();
  int64_t kept = 0;
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "featjnd_nms", [&] {
    const scalar_t* box = d.data_ptr<scalar_t>();
    const scalar_t* sc = s.data_ptr<scalar_t>();
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), int64_t{0});
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return score_before(sc[a], sc[b]); });
    std::vector<scalar_t> area(n);
    for (int64_t i = 0; i < n; ++i) {
      area[i] = (box[4 * i + 2] - box[4 * i]) * (box[4 * i + 3] - box[4 * i + 1]);
    }
    std::vector<char> gone(n, 0);
    int64_t* out = keep.data_ptr<int64_t>();
    for (int64_t a = 0; a < n; ++a) {
      const int64_t i = order[a];
      if (gone[i]) continue;
      out[kept++] = i;
      for (int64_t b = a + 1; b < n; ++b) {
        const int64_t j = order[b];
        if (gone[j]) continue;
        const scalar_t w = std::max(std::min(box[4 * i + 2], box[4 * j + 2]) - std::max(box[4 * i], box[4 * j]), scalar_t(0));
        const scalar_t h =
            std::max(std::min(box[4 * i + 3], box[4 * j + 3]) - std::max(box[4 * i + 1], box[4 * j + 1]), scalar_t(0));
        const scalar_t inter = w * h;
        const scalar_t iou = inter / (area[i] + area[j] - inter);
        if (iou > iou_threshold) gone[j] = 1;
      }
    }
  });
  return keep.narrow(0, 0, kept).clone();
}

// ------------------------------------------------------------------------------------------------
// roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width,
//           int sampling_ratio, bool aligned) -> Tensor
//
// input [B, C, H, W]; rois [K, 5] rows (batch index, x1, y1, x2, y2) in input-image coordinates;
// output [K, C, pooled_height, pooled_width]. Each RoI is scaled by spatial_scale (and shifted by
// -0.5 when `aligned`, the half-pixel convention; without it a RoI is at least 1x1), cut into
// pooled_height x pooled_width bins, and each bin is the average of grid_h x grid_w bilinear
// samples at the centres of a regular sub-grid of the bin, where grid = sampling_ratio when > 0,
// else ceil(bin size) (adaptive). A sample with y < -1, y > H, x < -1 or x > W contributes 0 (but
// still counts in the average); otherwise negative coordinates are clamped to 0 and coordinates
// beyond the last row/column to it.

// One bilinear sample: four plane offsets and their weights; `valid == false` contributes nothing.
template <typename T>
struct Tap {
  int64_t o[4];
  T w[4];
  bool valid;
};

template <typename T>
Tap<T> bilinear_tap(T y, T x, int64_t height, int64_t width) {
  Tap<T> t{};
  t.valid = false;
  if (y < T(-1) || y > T(height) || x < T(-1) || x > T(width)) return t;
  if (y <= 0) y = 0;
  if (x <= 0) x = 0;
  int64_t y0 = static_cast<int64_t>(y);
  int64_t x0 = static_cast<int64_t>(x);
  int64_t y1, x1;
  if (y0 >= height - 1) {
    y0 = y1 = height - 1;
    y = static_cast<T>(y0);
  } else {
    y1 = y0 + 1;
  }
  if (x0 >= width - 1) {
    x0 = x1 = width - 1;
    x = static_cast<T>(x0);
  } else {
    x1 = x0 + 1;
  }
  const T ly = y - static_cast<T>(y0), lx = x - static_cast<T>(x0);
  const T hy = T(1) - ly, hx = T(1) - lx;
  t.o[0] = y0 * width + x0;
  t.o[1] = y0 * width + x1;
  t.o[2] = y1 * width + x0;
  t.o[3] = y1 * width + x1;
  t.w[0] = hy * hx;
  t.w[1] = hy * lx;
  t.w[2] = ly * hx;
  t.w[3] = ly * lx;
  t.valid = true;
  return t;
}

// The geometry of one RoI: its taps (bin-major: for each bin, grid_h * grid_w taps) and the divisor.
template <typename T>
struct RoiTaps {
  int64_t batch;
  int64_t per_bin;
  T count;
  std::vector<Tap<T>> taps;
};

template <typename T>
RoiTaps<T> roi_taps(const T* roi, int64_t batch_size, T spatial_scale, int64_t pooled_h, int64_t pooled_w,
                    int64_t sampling_ratio, bool aligned, int64_t height, int64_t width) {
  RoiTaps<T> r;
  const T b = roi[0];
  TORCH_CHECK(b >= T(0) && b < T(batch_size), "torchvision::roi_align (featjnd): RoI batch index ", b,
              " is outside [0, ", batch_size, ")");
  r.batch = static_cast<int64_t>(b);
  const T shift = aligned ? T(0.5) : T(0);
  const T x_start = roi[1] * spatial_scale - shift;
  const T y_start = roi[2] * spatial_scale - shift;
  const T x_end = roi[3] * spatial_scale - shift;
  const T y_end = roi[4] * spatial_scale - shift;
  T roi_w = x_end - x_start;
  T roi_h = y_end - y_start;
  if (!aligned) {
    roi_w = std::max(roi_w, T(1));
    roi_h = std::max(roi_h, T(1));
  }
  const T bin_h = roi_h / static_cast<T>(pooled_h);
  const T bin_w = roi_w / static_cast<T>(pooled_w);
  const int64_t grid_h = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(std::ceil(roi_h / static_cast<T>(pooled_h)));
  const int64_t grid_w = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(std::ceil(roi_w / static_cast<T>(pooled_w)));
  const int64_t gh = std::max<int64_t>(grid_h, 0), gw = std::max<int64_t>(grid_w, 0);
  r.per_bin = gh * gw;
  r.count = static_cast<T>(std::max<int64_t>(grid_h * grid_w, 1));
  r.taps.reserve(static_cast<size_t>(pooled_h * pooled_w * r.per_bin));
  for (int64_t ph = 0; ph < pooled_h; ++ph) {
    for (int64_t pw = 0; pw < pooled_w; ++pw) {
      for (int64_t iy = 0; iy < gh; ++iy) {
        const T y = y_start + static_cast<T>(ph) * bin_h + static_cast<T>(iy + 0.5) * bin_h / static_cast<T>(grid_h);
        for (int64_t ix = 0; ix < gw; ++ix) {
          const T x = x_start + static_cast<T>(pw) * bin_w + static_cast<T>(ix + 0.5) * bin_w / static_cast<T>(grid_w);
          r.taps.push_back(bilinear_tap(y, x, height, width));
        }
      }
    }
  }
  return r;
}

void check_roi_args(const char* op, const at::Tensor& rois, int64_t pooled_h, int64_t pooled_w) {
  TORCH_CHECK(rois.device().is_cpu(), op, " (featjnd): only CPU tensors are supported, got ", rois.device());
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, op, " (featjnd): rois must be [K, 5], got ", rois.sizes());
  TORCH_CHECK(pooled_h > 0 && pooled_w > 0, op, " (featjnd): pooled size must be positive, got ", pooled_h, "x",
              pooled_w);
}

at::Tensor roi_align_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                         int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  check_roi_args("torchvision::roi_align", rois, pooled_h, pooled_w);
  TORCH_CHECK(input.device().is_cpu(), "torchvision::roi_align (featjnd): only CPU tensors are supported, got ",
              input.device());
  TORCH_CHECK(input.dim() == 4, "torchvision::roi_align (featjnd): input must be [B, C, H, W], got ", input.sizes());
  TORCH_CHECK(input.scalar_type() == rois.scalar_type(), "torchvision::roi_align (featjnd): input is ",
              input.scalar_type(), " but rois are ", rois.scalar_type());
  const int64_t k = rois.size(0), batch = input.size(0), channels = input.size(1);
  const int64_t height = input.size(2), width = input.size(3);
  at::Tensor out = at::zeros({k, channels, pooled_h, pooled_w}, input.options());
  if (k == 0 || out.numel() == 0) return out;
  const at::Tensor in = input.contiguous();
  const at::Tensor r = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "featjnd_roi_align", [&] {
    const scalar_t* x = in.data_ptr<scalar_t>();
    const scalar_t* roi = r.data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    const int64_t plane = height * width, bins = pooled_h * pooled_w;
    at::parallel_for(0, k, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const RoiTaps<scalar_t> g = roi_taps(roi + 5 * n, batch, static_cast<scalar_t>(spatial_scale), pooled_h, pooled_w,
                                             sampling_ratio, aligned, height, width);
        for (int64_t c = 0; c < channels; ++c) {
          const scalar_t* src = x + (g.batch * channels + c) * plane;
          scalar_t* dst = y + (n * channels + c) * bins;
          for (int64_t bin = 0; bin < bins; ++bin) {
            scalar_t acc = 0;
            const Tap<scalar_t>* t = g.taps.data() + bin * g.per_bin;
            for (int64_t s = 0; s < g.per_bin; ++s, ++t) {
              if (!t->valid) continue;
              acc += t->w[0] * src[t->o[0]] + t->w[1] * src[t->o[1]] + t->w[2] * src[t->o[2]] + t->w[3] * src[t->o[3]];
            }
            dst[bin] = acc / g.count;
          }
        }
      }
    });
  });
  return out;
}

// _roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height,
//                     int pooled_width, int batch_size, int channels, int height, int width,
//                     int sampling_ratio, bool aligned) -> Tensor
// The gradient of roi_align with respect to its input: each output bin's gradient, divided by the
// bin's sample count, spread onto the four pixels of each sample with the bilinear weights.
at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                                  int64_t pooled_w, int64_t batch_size, int64_t channels, int64_t height, int64_t width,
                                  int64_t sampling_ratio, bool aligned) {
  check_roi_args("torchvision::_roi_align_backward", rois, pooled_h, pooled_w);
  TORCH_CHECK(grad.device().is_cpu(), "torchvision::_roi_align_backward (featjnd): only CPU tensors are supported");
  const int64_t k = rois.size(0);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == k && grad.size(1) == channels && grad.size(2) == pooled_h &&
                  grad.size(3) == pooled_w,
              "torchvision::_roi_align_backward (featjnd): grad must be [", k, ", ", channels, ", ", pooled_h, ", ",
              pooled_w, "], got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == rois.scalar_type(), "torchvision::_roi_align_backward (featjnd): grad is ",
              grad.scalar_type(), " but rois are ", rois.scalar_type());
  at::Tensor gin = at::zeros({batch_size, channels, height, width}, grad.options());
  if (k == 0 || gin.numel() == 0) return gin;
  const at::Tensor go = grad.contiguous();
  const at::Tensor r = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "featjnd_roi_align_backward", [&] {
    const scalar_t* g_out = go.data_ptr<scalar_t>();
    const scalar_t* roi = r.data_ptr<scalar_t>();
    scalar_t* g_in = gin.data_ptr<scalar_t>();
    const int64_t plane = height * width, bins = pooled_h * pooled_w;
    std::vector<RoiTaps<scalar_t>> geo;
    geo.reserve(static_cast<size_t>(k));
    for (int64_t n = 0; n < k; ++n) {
      geo.push_back(roi_taps(roi + 5 * n, batch_size, static_cast<scalar_t>(spatial_scale), pooled_h, pooled_w,
                             sampling_ratio, aligned, height, width));
    }
    // Parallel over channels: every channel plane of the gradient is written by one thread only.
    at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        for (int64_t n = 0; n < k; ++n) {
          const RoiTaps<scalar_t>& g = geo[n];
          scalar_t* dst = g_in + (g.batch * channels + c) * plane;
          const scalar_t* src = g_out + (n * channels + c) * bins;
          for (int64_t bin = 0; bin < bins; ++bin) {
            const scalar_t v = src[bin] / g.count;
            const Tap<scalar_t>* t = g.taps.data() + bin * g.per_bin;
            for (int64_t s = 0; s < g.per_bin; ++s, ++t) {
              if (!t->valid) continue;
              for (int q = 0; q < 4; ++q) dst[t->o[q]] += v * t->w[q];
            }
          }
        }
      }
    });
  });
  return gin;
}

// ------------------------------------------------------------------------------------------------
// Autograd for roi_align: forward below autograd, backward through torchvision::_roi_align_backward
// (first derivatives only).

at::Tensor call_roi_align(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                          int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("torchvision::roi_align", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, int64_t, int64_t, int64_t, bool)>();
  return op.call(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned);
}

at::Tensor call_roi_align_backward(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                                   int64_t pooled_w, int64_t batch_size, int64_t channels, int64_t height, int64_t width,
                                   int64_t sampling_ratio, bool aligned) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("torchvision::_roi_align_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, int64_t, int64_t, int64_t, int64_t,
                                         int64_t, int64_t, int64_t, bool)>();
  return op.call(grad, rois, spatial_scale, pooled_h, pooled_w, batch_size, channels, height, width, sampling_ratio,
                 aligned);
}

class RoIAlignFunction : public torch::autograd::Function<RoIAlignFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                                                const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                                                int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
    ctx->saved_data["spatial_scale"] = spatial_scale;
    ctx->saved_data["pooled_h"] = pooled_h;
    ctx->saved_data["pooled_w"] = pooled_w;
    ctx->saved_data["sampling_ratio"] = sampling_ratio;
    ctx->saved_data["aligned"] = aligned;
    ctx->saved_data["input_shape"] = input.sizes().vec();
    ctx->save_for_backward({rois});
    at::AutoDispatchBelowADInplaceOrView below;
    return {call_roi_align(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grad_output) {
    const at::Tensor rois = ctx->get_saved_variables()[0];
    const std::vector<int64_t> shape = ctx->saved_data["input_shape"].toIntVector();
    const at::Tensor grad_input = call_roi_align_backward(
        grad_output[0], rois, ctx->saved_data["spatial_scale"].toDouble(), ctx->saved_data["pooled_h"].toInt(),
        ctx->saved_data["pooled_w"].toInt(), shape[0], shape[1], shape[2], shape[3],
        ctx->saved_data["sampling_ratio"].toInt(), ctx->saved_data["aligned"].toBool());
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor roi_align_autograd(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                              int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  return RoIAlignFunction::apply(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)[0];
}

void write_message(char* buf, size_t len, const std::string& msg) {
  if (buf == nullptr || len == 0) return;
  const size_t n = std::min(len - 1, msg.size());
  std::memcpy(buf, msg.data(), n);
  buf[n] = '\0';
}

}  // namespace

// The schemas, exactly as torchvision 0.14 declares them (`torch.ops.torchvision.<op>.default._schema`).
static const char* const kNmsSchema = "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor";
static const char* const kRoiAlignSchema =
    "roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor";
static const char* const kRoiAlignBackwardSchema =
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
    "int batch_size, int channels, int height, int width, int sampling_ratio, bool aligned) -> Tensor";

// Registers the operators once per process. Returns 0 when this call registered them, 1 when
// they were already present (registered before, by this function or by torchvision itself), and
// -1 on failure, with a message in `err` (NUL-terminated, truncated to `err_len` bytes).
// Not thread-safe: the caller serialises calls (the Rust side calls it under a `OnceLock`).
extern "C" int featjnd_register_torchvision_ops(char* err, size_t err_len) {
  try {
    auto& dispatcher = c10::Dispatcher::singleton();
    const char* names[] = {"torchvision::nms", "torchvision::roi_align", "torchvision::_roi_align_backward"};
    int present = 0;
    for (const char* name : names) {
      if (dispatcher.findSchema(c10::OperatorName(name, "")).has_value()) ++present;
    }
    if (present == 3) return 1;
    if (present != 0) {
      write_message(err, err_len,
                    "some torchvision operators are already registered in this process, others are not; "
                    "refusing to mix implementations");
      return -1;
    }
    // Leaked on purpose: a Library's registrations last as long as the object.
    auto* defs = new torch::Library(torch::Library::FRAGMENT, "torchvision", std::nullopt, __FILE__, __LINE__);
    defs->def(kNmsSchema);
    defs->def(kRoiAlignSchema);
    defs->def(kRoiAlignBackwardSchema);
    auto* cpu = new torch::Library(torch::Library::IMPL, "torchvision", c10::DispatchKey::CPU, __FILE__, __LINE__);
    cpu->impl("nms", TORCH_FN(nms_cpu));
    cpu->impl("roi_align", TORCH_FN(roi_align_cpu));
    cpu->impl("_roi_align_backward", TORCH_FN(roi_align_backward_cpu));
    auto* autograd =
        new torch::Library(torch::Library::IMPL, "torchvision", c10::DispatchKey::Autograd, __FILE__, __LINE__);
    autograd->impl("roi_align", TORCH_FN(roi_align_autograd));
    return 0;
  } catch (const std::exception& e) {
    write_message(err, err_len, e.what());
    return -1;
  } catch (...) {
    write_message(err, err_len, "unknown C++ exception");
    return -1;
  }
}
