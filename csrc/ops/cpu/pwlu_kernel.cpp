// CPU kernels of pwlu_mmdet::pwlu, pwlu_ and pwlu_backward, and their registration.
//
// x is viewed as (outer, C, inner) in memory order (pwlu_common.h). With inner > 1 (contiguous
// NC*) every `inner` consecutive elements share one channel (a plane); with inner == 1
// (channels-last, or 2-D input) channels interleave within each row of C elements. Layer-wise
// parameters are the same for every element, so the tensor is then processed as one plane.
// Planes use per-set (slope, intercept) tables (pwlu_tables.h); rows use the point form of
// pwlu_element.h, which needs no per-channel table: a table per channel would cost more than
// the elements of an fc layer's few rows of many channels.
//
// The element loops are in pwlu_loops.h, the row tiles in pwlu_row_tiles.h and the parameter
// gradients' histograms in pwlu_histograms.h. Parameter-gradient sums run in a fixed order that
// depends on the shape only, never on the thread count: results are reproducible bit for bit.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../pwlu_common.h"
#include "../pwlu_element.h"
#include "avx512.h"
#include "pwlu_histograms.h"
#include "pwlu_loops.h"
#include "pwlu_parallel.h"
#include "pwlu_row_tiles.h"
#include "pwlu_tables.h"

namespace pwlu_mmdet {
namespace ops {
namespace cpu {

namespace {

// Sets with at most this many table entries keep per-set scratch on the stack.
constexpr int kMaxInlineEntries = 64;

// The interleaved-row backward cuts the rows into one block per kRowBlockElements elements, at
// most kMaxRowBlocks, so that a few channel groups still give every thread work: each block
// zeroes and adds a C x W partial histogram, which 2^19 elements amortise, and the cap bounds
// the partials' memory.
constexpr int64_t kRowBlockElements = int64_t(1) << 19;
constexpr int64_t kMaxRowBlocks = 32;

// y may be x (the in-place op): every path reads an element before writing it.
template <typename scalar_t, typename acc_t>
void forward_kernel(const scalar_t* x, scalar_t* y, const PwluLayout& layout,
                    const PwluParams& params) {
  const bool in_place = static_cast<const void*>(x) == static_cast<const void*>(y);
  if (uses_planes(layout, params)) {
    const CpuTables<acc_t> tab(params);
    parallel_planes(layout, tab.layer_wise(), [&](int64_t base, int64_t len, int64_t s) {
      const acc_t lb = tab.ranges[s].left_bound, inv = tab.ranges[s].inv_width;
      if (forward_plane(x + base, y + base, len, lb, inv, tab.n, tab.slopes_of(s),
                        tab.intercepts_of(s), /*exact=*/in_place)) {
        fix_infinities(x + base, y + base, len, lb, inv, tab.n, tab.slopes_of(s),
                       tab.intercepts_of(s));
      }
    });
    return;
  }
  const CpuRows<acc_t> rows(params);
  for_each_row_group<scalar_t>(
      layout, rows.view,
      [&](int64_t base, int64_t count, const GroupTables<acc_t>& tab) {
        return PWLU_AVX512_OR_ZERO(
            scalar_t, avx512::fits(tab.n),
            avx512::forward_tile(x + base, y + base, layout.channels, count, tab));
      },
      [&](int64_t base, int64_t count, const RowView<acc_t>& p) {
        forward_row(x + base, y + base, count, p);
      });
}

// grad_x only (frozen parameters): as the forward, with g * S_j.
template <typename scalar_t, typename acc_t>
void input_grad_kernel(const scalar_t* g, const scalar_t* x, scalar_t* gx,
                       const PwluLayout& layout, const PwluParams& params) {
  if (uses_planes(layout, params)) {
    const CpuTables<acc_t> tab(params);
    parallel_planes(layout, tab.layer_wise(), [&](int64_t base, int64_t len, int64_t s) {
      input_grad_plane(g + base, x + base, gx + base, len, tab.ranges[s].left_bound,
                       tab.ranges[s].inv_width, tab.n, tab.slopes_of(s));
    });
    return;
  }
  const CpuRows<acc_t> rows(params);
  for_each_row_group<scalar_t>(
      layout, rows.view,
      [&](int64_t base, int64_t count, const GroupTables<acc_t>& tab) {
        return PWLU_AVX512_OR_ZERO(scalar_t, avx512::fits(tab.n),
                                   avx512::input_grad_tile(g + base, x + base, gx + base,
                                                           layout.channels, count, tab));
      },
      [&](int64_t base, int64_t count, const RowView<acc_t>& p) {
        input_grad_row(g + base, x + base, gx + base, count, p);
      });
}

// Planes: grad_x (gx may be null) and the per-set histograms, histograms[s * W .. s * W + W),
// W = histogram_width(N); their parameter gradients into out.
template <typename scalar_t, typename acc_t>
void param_grad_planes(const scalar_t* g, const scalar_t* x, scalar_t* gx,
                     const PwluLayout& layout, const CpuTables<acc_t>& tab,
                     const ParamGradOut<acc_t>& out) {
  const int n = tab.n;
  const int width = histogram_width(n);
  const int64_t channels = layout.channels;
  if (!tab.layer_wise()) {
    // One task per channel; within it, plane histograms are added in plane order (planes
    // shorter than a chunk are packed into chunks).
    at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> plane(width), hist(width);
      PlaneScratch<scalar_t, acc_t> scratch(
          std::min(kHistogramChunk, layout.outer * layout.inner), n);
      for (int64_t c = begin; c < end; ++c) {
        std::fill(hist.begin(), hist.end(), acc_t(0));
        if (layout.inner < kHistogramChunk) {
          const int64_t first = c * layout.inner;
          param_grad_short_planes(g + first, x + first, gx ? gx + first : nullptr, layout.outer,
                                  channels * layout.inner, layout.inner,
                                  tab.ranges[c].left_bound, tab.ranges[c].inv_width, n,
                                  tab.slopes_of(c), hist.data(), scratch);
          histogram_to_param_grads(hist.data(), tab.slopes_of(c), tab.ranges[c], out, c);
          continue;
        }
        for (int64_t o = 0; o < layout.outer; ++o) {
          const int64_t base = (o * channels + c) * layout.inner;
          std::fill(plane.begin(), plane.end(), acc_t(0));
          param_grad_plane(g + base, x + base, gx ? gx + base : nullptr, layout.inner,
                           tab.ranges[c].left_bound, tab.ranges[c].inv_width, n,
                           tab.slopes_of(c), plane.data(), scratch);
          for (int w = 0; w < width; ++w) hist[w] += plane[w];
        }
        histogram_to_param_grads(hist.data(), tab.slopes_of(c), tab.ranges[c], out, c);
      }
    });
    return;
  }
  // Layer-wise: one plane cut into blocks.
  const int64_t numel = layout.numel();
  const int64_t blocks = layer_wise_blocks(numel);
  const int64_t per_block = (numel + blocks - 1) / blocks;
  std::vector<acc_t> block_hist(blocks * width, acc_t(0));
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = b * per_block;
      const int64_t last = std::min(numel, first + per_block);
      if (first >= last) continue;
      PlaneScratch<scalar_t, acc_t> scratch(std::min(kHistogramChunk, last - first), n);
      param_grad_plane(g + first, x + first, gx ? gx + first : nullptr, last - first,
                       tab.ranges[0].left_bound, tab.ranges[0].inv_width, n, tab.slopes_of(0),
                       block_hist.data() + b * width, scratch);
    }
  });
  std::vector<acc_t> hist(width, acc_t(0));
  add_blocks(block_hist, blocks, width, hist.data());
  histogram_to_param_grads(hist.data(), tab.slopes_of(0), tab.ranges[0], out, 0);
}

// The parameter gradients of channels [first, last) of interleaved rows from their histograms
// (channel c's at hist + c * W, W = histogram_width(N)); the slopes are built per channel, as
// the rows have no tables.
template <typename acc_t>
void row_histograms_to_param_grads(const acc_t* hist, const RowView<acc_t>& p, int64_t first,
                                   int64_t last, const ParamGradOut<acc_t>& out) {
  const int n = p.n;
  const int width = histogram_width(n);
  acc_t slopes[kMaxInlineEntries];
  std::vector<acc_t> heap(n + 2 > kMaxInlineEntries ? n + 2 : 0);
  acc_t* s = heap.empty() ? slopes : heap.data();
  for (int64_t c = first; c < last; ++c) {
    const PwluRange<acc_t> r = p.range(c);
    build_slopes(p.points + c * (n + 1), r, p.left_slope[c], p.right_slope[c], s);
    histogram_to_param_grads(hist + c * width, s, r, out, c);
  }
}

// Interleaved rows: as param_grad_planes, with the point form (tiles: tables). Tasks own groups
// of kRowGroup channels over a block of rows, so that the histograms need no per-thread copies;
// blocks of rows (a count that depends on the shape only) are added in block order. Adjacent
// elements are different channels: the scatter has no chains to break.
template <typename scalar_t, typename acc_t>
void param_grad_rows(const scalar_t* g, const scalar_t* x, scalar_t* gx,
                     const PwluLayout& layout, const CpuRows<acc_t>& rows,
                     const ParamGradOut<acc_t>& out) {
  const RowView<acc_t>& p = rows.view;
  const int n = p.n;
  const int width = histogram_width(n);
  const int64_t channels = layout.channels;
  const int64_t span = channels * width;
  const int64_t groups = (channels + kRowGroup - 1) / kRowGroup;
  const int64_t blocks = std::max<int64_t>(
      1, std::min<int64_t>({layout.numel() / kRowBlockElements, kMaxRowBlocks, layout.outer}));
  const int64_t rows_per_block = (layout.outer + blocks - 1) / blocks;
  std::vector<acc_t> block_hist(blocks * span, acc_t(0));
  auto convert = [&](const acc_t* hist, int64_t first, int64_t last) {
    row_histograms_to_param_grads(hist, p, first, last, out);
  };

  const bool tiles = tiles_available<scalar_t>(n);
  at::parallel_for(0, blocks * groups, 1, [&](int64_t begin, int64_t end) {
    ChunkScratch<acc_t> scratch(kTileRows * kRowGroup);
    std::vector<scalar_t> gx_scratch(gx ? 0 : kTileRows * kRowGroup);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / groups;
      const int64_t c0 = (task % groups) * kRowGroup;
      const int64_t count = std::min(kRowGroup, channels - c0);
      const RowView<acc_t> group = p.from(c0);
      acc_t* hist = block_hist.data() + b * span + c0 * width;
      const int64_t last = std::min(layout.outer, (b + 1) * rows_per_block);
      // One row through the row path, into the channels from `first` on.
      auto row = [&](int64_t r, int64_t first) {
        const int64_t base = r * channels + c0 + first;
        prepass_row(g + base, x + base, gx ? gx + base : gx_scratch.data(), count - first,
                    group.from(first), scratch.slot.data(), scratch.pairs.data());
        scatter_chunk(scratch, count - first, hist + first * width);
      };
      const int64_t first_row = b * rows_per_block;
      const auto tab = GroupTables<acc_t>::for_task(tiles, last - first_row, group, count);
      // Each channel still sees its rows in order.
      rows_of_group(
          first_row, last, count, tab != nullptr,
          [&](int64_t r) {
            [[maybe_unused]] const int64_t base = r * channels + c0;  // unused without AVX-512
            const int64_t done = PWLU_AVX512_OR_ZERO(
                scalar_t, avx512::fits(n),
                avx512::prepass_tile(g + base, x + base, channels,
                                     gx ? gx + base : gx_scratch.data(), gx ? channels : count,
                                     count, *tab, scratch.slot.data(), scratch.pairs.data()));
            scatter_tile(scratch, done, hist);
            return done;
          },
          row);
      // With one block of rows the group's sums are complete.
      if (blocks == 1) convert(block_hist.data(), c0, c0 + count);
    }
  });
  if (blocks == 1) return;
  std::vector<acc_t> sum(span, acc_t(0));
  add_blocks(block_hist, blocks, span, sum.data());
  at::parallel_for(0, channels, kRowGroup,
                   [&](int64_t begin, int64_t end) { convert(sum.data(), begin, end); });
}

at::Tensor pwlu_forward_cpu(const at::Tensor& x, const at::Tensor& points,
                            const at::Tensor& left_bound, const at::Tensor& right_bound,
                            const at::Tensor& left_slope, const at::Tensor& right_slope,
                            double range_eps) {
  const PwluCall call = prepare_call(x, points, left_bound, right_bound, left_slope, right_slope,
                                     range_eps);
  at::Tensor y = at::empty_like(call.x, call.x.options(), call.format);
  if (x.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pwlu_forward_cpu",
                                  [&] {
                                    using acc_t = at::opmath_type<scalar_t>;
                                    forward_kernel<scalar_t, acc_t>(
                                        call.x.const_data_ptr<scalar_t>(),
                                        y.data_ptr<scalar_t>(), call.layout, call.params);
                                  });
  return y;
}

// pwlu_: the forward written into x, for inference (no output allocation; ReLU's counterpart
// is relu_). An x that is not dense in its memory format is computed out of place and copied.
void pwlu_inplace_cpu(at::Tensor& x, const at::Tensor& points, const at::Tensor& left_bound,
                      const at::Tensor& right_bound, const at::Tensor& left_slope,
                      const at::Tensor& right_slope, double range_eps) {
  const PwluCall call = prepare_call(x, points, left_bound, right_bound, left_slope, right_slope,
                                     range_eps);
  if (x.numel() == 0) return;
  if (!call.x.is_same(x)) {
    x.copy_(pwlu_forward_cpu(x, points, left_bound, right_bound, left_slope, right_slope,
                             range_eps));
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pwlu_inplace_cpu",
                                  [&] {
                                    using acc_t = at::opmath_type<scalar_t>;
                                    scalar_t* data = x.data_ptr<scalar_t>();
                                    forward_kernel<scalar_t, acc_t>(data, data, call.layout,
                                                                    call.params);
                                  });
}

PwluGrads pwlu_backward_cpu(const at::Tensor& grad_output, const at::Tensor& x,
                            const at::Tensor& points, const at::Tensor& left_bound,
                            const at::Tensor& right_bound, const at::Tensor& left_slope,
                            const at::Tensor& right_slope, double range_eps, bool input_grad,
                            bool param_grads) {
  const PwluBackwardCall call = prepare_backward(grad_output, x, points, left_bound, right_bound,
                                                 left_slope, right_slope, range_eps, input_grad,
                                                 param_grads);
  if (x.numel() > 0 && (input_grad || param_grads)) {
    const PwluLayout& layout = call.layout;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "pwlu_backward_cpu", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          const scalar_t* gp = call.grad_output.const_data_ptr<scalar_t>();
          const scalar_t* xp = call.x.const_data_ptr<scalar_t>();
          scalar_t* gxp = input_grad ? call.grad_x.data_ptr<scalar_t>() : nullptr;
          if (!param_grads) {
            input_grad_kernel<scalar_t, acc_t>(gp, xp, gxp, layout, call.params);
            return;
          }
          const ParamGradOut<acc_t> out = call.param_grad_out<acc_t>();
          if (uses_planes(layout, call.params)) {
            param_grad_planes<scalar_t, acc_t>(gp, xp, gxp, layout,
                                               CpuTables<acc_t>(call.params), out);
          } else {
            param_grad_rows<scalar_t, acc_t>(gp, xp, gxp, layout, CpuRows<acc_t>(call.params),
                                             out);
          }
        });
  }
  return pack_grads(call, points);
}

}  // namespace

TORCH_LIBRARY_IMPL(pwlu_mmdet, CPU, m) {
  m.impl("pwlu", &pwlu_forward_cpu);
  m.impl("pwlu_", &pwlu_inplace_cpu);
  m.impl("pwlu_backward", &pwlu_backward_cpu);
}

}  // namespace cpu
}  // namespace ops
}  // namespace pwlu_mmdet
