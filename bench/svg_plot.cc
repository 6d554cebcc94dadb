#include "bench/svg_plot.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/report.h"
#include "bench/result_json.h"

namespace tessera::bench {
namespace {

constexpr double kPanelWidth = 380;
constexpr double kPanelHeight = 300;
constexpr double kMarginLeft = 60;
constexpr double kMarginTop = 50;
constexpr double kMarginBottom = 50;
constexpr double kGap = 40;
constexpr const char* kMeanColor = "#1f77b4";
constexpr const char* kP99Color = "#d62728";

std::string Escape(absl::string_view text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `v`.
double NiceCeil(double v) {
  if (!(v > 0) || !std::isfinite(v)) return 1.0;
  const double magnitude = std::pow(10.0, std::floor(std::log10(v)));
  for (double step : {1.0, 2.0, 5.0, 10.0}) {
    if (step * magnitude >= v) return step * magnitude;
  }
  return 10 * magnitude;
}

std::string Num(double v) { return absl::StrFormat("%.1f", v); }

struct Series {
  const char* id;
  const char* name;
  double PlotPoint::*mean;
  double PlotPoint::*p99;
};

}  // namespace

std::vector<PlotPoint> PlotPoints(const BenchResult& result) {
  std::vector<PlotPoint> points;
  for (const RunResult& run : result.runs) {
    const BenchMetrics& m = run.metrics;
    points.push_back({run.request_rate, m.ttft.mean_ms, m.ttft.p99_ms, m.tpot.mean_ms,
                      m.tpot.p99_ms, m.e2el.mean_ms, m.e2el.p99_ms});
  }
  return points;
}

std::string RenderLatencyPlot(const std::vector<PlotPoint>& points, const std::string& title) {
  // x positions: finite rates on a linear axis from 0; inf (and trace) runs to their right.
  double max_rate = 0;
  for (const PlotPoint& p : points) {
    if (p.rate.has_value() && std::isfinite(*p.rate)) max_rate = std::max(max_rate, *p.rate);
  }
  const double x_max = NiceCeil(max_rate > 0 ? max_rate : 1.0);
  int extra = 0;  // runs without a finite rate, placed in their own slots
  std::vector<double> x_frac;
  for (const PlotPoint& p : points) {
    if (p.rate.has_value() && std::isfinite(*p.rate)) {
      x_frac.push_back(*p.rate / x_max * 0.8);
    } else {
      x_frac.push_back(0.88 + 0.08 * extra++);
    }
  }
  const Series series[] = {
      {"ttft", "TTFT", &PlotPoint::ttft_mean_ms, &PlotPoint::ttft_p99_ms},
      {"tpot", "TPOT", &PlotPoint::tpot_mean_ms, &PlotPoint::tpot_p99_ms},
      {"e2el", "E2E latency", &PlotPoint::e2el_mean_ms, &PlotPoint::e2el_p99_ms}};
  const double width = 3 * (kMarginLeft + kPanelWidth) + 2 * kGap + 20;
  const double height = kMarginTop + kPanelHeight + kMarginBottom + 30;
  std::string svg = absl::StrFormat(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
      "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
      "<text x=\"%.0f\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">%s</text>\n",
      width, height, width, height, width / 2, Escape(title));
  for (int s = 0; s < 3; ++s) {
    const Series& se = series[s];
    const double ox = 10 + s * (kMarginLeft + kPanelWidth + kGap) + kMarginLeft;
    const double oy = kMarginTop;
    double y_top = 0;
    for (const PlotPoint& p : points) y_top = std::max({y_top, p.*se.mean, p.*se.p99});
    y_top = NiceCeil(y_top);
    auto X = [&](double frac) { return ox + frac * kPanelWidth; };
    auto Y = [&](double ms) { return oy + kPanelHeight - ms / y_top * kPanelHeight; };
    absl::StrAppend(&svg, "<g class=\"panel\" id=\"", se.id, "\">\n");
    absl::StrAppend(&svg, "<text x=\"", Num(ox + kPanelWidth / 2), "\" y=\"", Num(oy - 10),
                    "\" text-anchor=\"middle\" font-size=\"13\">", se.name, " (ms)</text>\n");
    absl::StrAppend(&svg, "<rect x=\"", Num(ox), "\" y=\"", Num(oy), "\" width=\"",
                    Num(kPanelWidth), "\" height=\"", Num(kPanelHeight),
                    "\" fill=\"none\" stroke=\"#444\"/>\n");
    for (int t = 0; t <= 4; ++t) {  // y ticks and grid
      const double v = y_top * t / 4;
      absl::StrAppend(&svg, "<line x1=\"", Num(ox), "\" y1=\"", Num(Y(v)), "\" x2=\"",
                      Num(ox + kPanelWidth), "\" y2=\"", Num(Y(v)),
                      "\" stroke=\"#ddd\"/>\n<text x=\"", Num(ox - 6), "\" y=\"", Num(Y(v) + 4),
                      "\" text-anchor=\"end\">", absl::StrFormat("%g", v), "</text>\n");
    }
    for (int t = 0; t <= 4; ++t) {  // x ticks over the finite part
      const double v = x_max * t / 4;
      absl::StrAppend(&svg, "<text x=\"", Num(X(0.8 * t / 4)), "\" y=\"",
                      Num(oy + kPanelHeight + 16), "\" text-anchor=\"middle\">",
                      absl::StrFormat("%g", v), "</text>\n");
    }
    for (size_t i = 0; i < points.size(); ++i) {
      if (points[i].rate.has_value() && std::isfinite(*points[i].rate)) continue;
      absl::StrAppend(&svg, "<text x=\"", Num(X(x_frac[i])), "\" y=\"", Num(oy + kPanelHeight + 16),
                      "\" text-anchor=\"middle\">", RateLabel(points[i].rate), "</text>\n");
    }
    absl::StrAppend(&svg, "<text x=\"", Num(ox + kPanelWidth / 2), "\" y=\"",
                    Num(oy + kPanelHeight + 36), "\" text-anchor=\"middle\">",
                    "request rate (req/s)</text>\n");
    for (int kind = 0; kind < 2; ++kind) {
      double PlotPoint::*field = kind == 0 ? se.mean : se.p99;
      const char* color = kind == 0 ? kMeanColor : kP99Color;
      std::string path;
      for (size_t i = 0; i < points.size(); ++i) {
        absl::StrAppend(&path, i == 0 ? "M" : " L", Num(X(x_frac[i])), " ",
                        Num(Y(points[i].*field)));
      }
      if (points.size() > 1) {
        absl::StrAppend(&svg, "<path d=\"", path, "\" fill=\"none\" stroke=\"", color,
                        "\" stroke-width=\"2\"", kind == 1 ? " stroke-dasharray=\"6 4\"" : "",
                        "/>\n");
      }
      for (size_t i = 0; i < points.size(); ++i) {
        absl::StrAppend(&svg, "<circle class=\"point ", kind == 0 ? "mean" : "p99", "\" cx=\"",
                        Num(X(x_frac[i])), "\" cy=\"", Num(Y(points[i].*field)),
                        "\" r=\"4\" fill=\"", color, "\"><title>",
                        Escape(absl::StrCat("rate ", RateLabel(points[i].rate), ": ",
                                            kind == 0 ? "mean " : "p99 ",
                                            absl::StrFormat("%.2f", points[i].*field), " ms")),
                        "</title></circle>\n");
      }
    }
    absl::StrAppend(&svg, "</g>\n");
  }
  const double ly = height - 12;
  absl::StrAppend(&svg, "<g class=\"legend\">\n<line x1=\"", Num(kMarginLeft), "\" y1=\"",
                  Num(ly - 4), "\" x2=\"", Num(kMarginLeft + 30), "\" y2=\"", Num(ly - 4),
                  "\" stroke=\"", kMeanColor, "\" stroke-width=\"2\"/>\n<text x=\"",
                  Num(kMarginLeft + 36), "\" y=\"", Num(ly), "\">mean</text>\n<line x1=\"",
                  Num(kMarginLeft + 90), "\" y1=\"", Num(ly - 4), "\" x2=\"",
                  Num(kMarginLeft + 120), "\" y2=\"", Num(ly - 4), "\" stroke=\"", kP99Color,
                  "\" stroke-width=\"2\" stroke-dasharray=\"6 4\"/>\n<text x=\"",
                  Num(kMarginLeft + 126), "\" y=\"", Num(ly), "\">p99</text>\n</g>\n</svg>\n");
  return svg;
}

absl::Status WriteLatencyPlot(const BenchResult& result, const std::string& path) {
  if (!absl::EndsWithIgnoreCase(path, ".svg")) {
    return absl::InvalidArgumentError(
        absl::StrCat("--plot: '", path,
                     "': only SVG is written (name the file *.svg; browsers and "
                     "`rsvg-convert -o plot.png` show or convert it)"));
  }
  const std::string title = absl::StrCat("tessera bench: ", result.server.model, " over ",
                                         EndpointName(result.config.endpoint), ", ",
                                         DatasetName(result.config.workload.dataset), " dataset");
  return WriteTextFile(path, RenderLatencyPlot(PlotPoints(result), title));
}

}  // namespace tessera::bench
