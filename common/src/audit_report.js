// Draws audit.html from the audit document (common/audit.h, schema
// attune.audit/3) embedded in the page as JSON, with d3 (v3, inlined beside
// this script by common/audit_html.cc). Everything is drawn at load, with no
// network: the page is one self-contained file.
(function () {
  "use strict";
  var audit = JSON.parse(document.getElementById("audit-data").textContent);
  var f3 = d3.format(".3f"), f4 = d3.format(".4f"), pct = d3.format(".1%");
  var modalityColor = d3.scale.category10().domain(audit.modalities || []);

  function num(x, f) {
    return x === null || x === undefined ? "n/a" : (f || f3)(x);
  }
  function section(title, note) {
    var s = d3.select("#report").append("section");
    s.append("h2").text(title);
    if (note) s.append("p").attr("class", "note").text(note);
    return s;
  }
  function table(parent, head, rows) {
    var t = parent.append("table");
    t.append("thead").append("tr").selectAll("th").data(head).enter().append("th").text(String);
    t.append("tbody").selectAll("tr").data(rows).enter().append("tr")
      .selectAll("td").data(function (r) { return r; }).enter().append("td").text(String);
    return t;
  }
  function cellLabel(c) {
    return c.suppressed ? c.value + " (suppressed)" : c.value + " (n=" + c.n + ")";
  }

  // --- Header and the whole split ---------------------------------------
  var head = d3.select("#report").append("header");
  head.append("h1").text("Subgroup audit" + (audit.study_id ? ": " + audit.study_id : ""));
  var where = [];
  if (audit.model_version !== undefined) where.push("model version " + audit.model_version);
  else if (audit.round !== undefined) where.push("round " + audit.round);
  where.push("split '" + audit.split + "'", audit.overall.n + " patients",
             "cells under " + audit.min_cell + " patients suppressed (" +
             audit.suppressed_cells + " in all)", audit.schema);
  head.append("p").attr("class", "meta").text(where.join(" \u00b7 "));
  var o = audit.overall;
  table(section("Whole split"),
        ["patients", "prevalence", "AUC", "accuracy", "TPR", "FPR", "ECE", "loss"],
        [[o.n, num(o.prevalence), num(o.auc), num(o.accuracy), num(o.tpr), num(o.fpr),
          num(o.ece), num(o.loss, f4)]]);

  // --- Shortcut flags ----------------------------------------------------
  var rule = audit.flag_rule || {};
  var flags = section(
    "Shortcut flags",
    "A feature is flagged when its share of attention in a group differs from the rest of " +
    "its column by a Jensen\u2013Shannon term of at least " + rule.jsd_contribution_bits_at_least +
    " bits and its input value alone tells the group from the rest (membership AUC at least " +
    rule.membership_auc_lower_95_at_least + "): the model may use it as a proxy for the group.");
  flags.attr("id", "flags");
  if (!audit.flags.length) {
    flags.append("p").attr("class", "ok").text("No feature is flagged.");
  } else {
    table(flags,
          ["feature", "group", "JSD term (bits)", "attention share: group", "rest",
           "membership AUC", "mean value: group", "rest", "n / rest"],
          audit.flags.map(function (f) {
            return [f.feature, f.column + " = " + f.value, f4(f.jsd_contribution_bits),
                    pct(f.attention_share), pct(f.attention_share_rest), f3(f.membership_auc),
                    num(f.mean_value), num(f.mean_value_rest), f.n + " / " + f.rest_n];
          })).attr("class", "flags");
    // Evidence: the flagged feature's attention share, group against rest.
    var w = 560, row = 26, left = 260;
    var svg = flags.append("svg").attr("class", "chart").attr("width", w)
      .attr("height", audit.flags.length * 2 * row + 30);
    var x = d3.scale.linear().range([0, w - left - 70])
      .domain([0, d3.max(audit.flags, function (f) {
        return Math.max(f.attention_share, f.attention_share_rest);
      }) || 1]);
    audit.flags.forEach(function (f, i) {
      [[f.feature + " \u2014 " + f.value, f.attention_share, "group"],
       ["rest of " + f.column, f.attention_share_rest, "rest"]].forEach(function (b, j) {
        var y = (2 * i + j) * row;
        svg.append("text").attr("x", left - 6).attr("y", y + 17).attr("text-anchor", "end")
          .text(b[0]);
        svg.append("rect").attr("class", b[2]).attr("x", left).attr("y", y + 4)
          .attr("height", row - 8).attr("width", x(b[1]));
        svg.append("text").attr("x", left + x(b[1]) + 4).attr("y", y + 17).text(pct(b[1]));
      });
    });
    svg.append("g").attr("class", "axis")
      .attr("transform", "translate(" + left + "," + audit.flags.length * 2 * row + ")")
      .call(d3.svg.axis().scale(x).orient("bottom").ticks(5).tickFormat(pct));
  }

  // --- Per column: AUC with counts, β per modality, the gaps ------------
  function aucChart(parent, column) {
    var cells = column.cells, row = 24, left = 220, w = 620;
    var svg = parent.append("svg").attr("class", "chart").attr("width", w)
      .attr("height", cells.length * row + 30);
    var x = d3.scale.linear().domain([0, 1]).range([0, w - left - 60]);
    cells.forEach(function (c, i) {
      var y = i * row;
      svg.append("text").attr("x", left - 6).attr("y", y + 16).attr("text-anchor", "end")
        .attr("class", c.suppressed ? "muted" : null).text(cellLabel(c));
      if (c.suppressed || c.auc === null) {
        svg.append("text").attr("class", "muted").attr("x", left + 4).attr("y", y + 16)
          .text(c.suppressed ? c.reason : "AUC undefined (one class only)");
        return;
      }
      svg.append("rect").attr("class", "auc").attr("x", left).attr("y", y + 3)
        .attr("height", row - 6).attr("width", x(c.auc));
      svg.append("text").attr("x", left + x(c.auc) + 4).attr("y", y + 16).text(f3(c.auc));
    });
    if (o.auc !== null) {
      svg.append("line").attr("class", "overall").attr("x1", left + x(o.auc))
        .attr("x2", left + x(o.auc)).attr("y1", 0).attr("y2", cells.length * row);
    }
    svg.append("g").attr("class", "axis")
      .attr("transform", "translate(" + left + "," + cells.length * row + ")")
      .call(d3.svg.axis().scale(x).orient("bottom").ticks(5));
  }

  function betaChart(parent, column) {
    var cells = column.cells.filter(function (c) { return !c.suppressed; });
    var mods = audit.modalities, row = 24, left = 220, w = 620;
    var svg = parent.append("svg").attr("class", "chart").attr("width", w)
      .attr("height", cells.length * row + 50);
    var x = d3.scale.linear().domain([0, 1]).range([0, w - left - 20]);
    cells.forEach(function (c, i) {
      var y = i * row, at = 0;
      svg.append("text").attr("x", left - 6).attr("y", y + 16).attr("text-anchor", "end")
        .text(cellLabel(c));
      mods.forEach(function (m) {
        var b = c.mean_beta[m] || 0;
        svg.append("rect").attr("x", left + x(at)).attr("y", y + 3).attr("height", row - 6)
          .attr("width", x(b)).style("fill", modalityColor(m))
          .append("title").text(m + ": " + f3(b));
        at += b;
      });
    });
    var legend = svg.append("g")
      .attr("transform", "translate(" + left + "," + (cells.length * row + 20) + ")");
    mods.forEach(function (m, i) {
      legend.append("rect").attr("x", i * 110).attr("width", 12).attr("height", 12)
        .style("fill", modalityColor(m));
      legend.append("text").attr("x", i * 110 + 16).attr("y", 11).text(m);
    });
  }

  function gapText(name, g) {
    if (!g) return name + ": n/a (fewer than two published cells)";
    return name + ": " + f3(g.value) + (g.highest ? " (" + g.highest + " highest, " +
                                        g.lowest + " lowest)" : "");
  }

  // --- Attention heatmap over features, per group -------------------------
  // The features shown: the most attended overall, and every flagged one.
  function shownFeatures(column) {
    var order = d3.range(audit.features.length).sort(function (a, b) {
      return (o.attention[b] || 0) - (o.attention[a] || 0);
    }).slice(0, 24);
    audit.flags.forEach(function (f) {
      var k = audit.features.indexOf(f.feature);
      if (f.column === column.column && order.indexOf(k) < 0) order.push(k);
    });
    return order;
  }

  function heatmap(parent, column) {
    var cells = column.cells.filter(function (c) { return !c.suppressed && c.attention; });
    if (!cells.length || !audit.features.length) return;
    var feats = shownFeatures(column), left = 220, top = 170, size = 20;
    var flagged = {};
    audit.flags.forEach(function (f) {
      if (f.column === column.column) flagged[f.feature] = true;
    });
    var max = d3.max(cells, function (c) {
      return d3.max(feats, function (k) { return c.attention[k]; });
    }) || 1;
    var color = d3.scale.linear().domain([0, max]).range(["#f7fbff", "#08306b"]);
    var svg = parent.append("svg").attr("class", "chart heatmap")
      .attr("width", left + feats.length * size + 80).attr("height", top + cells.length * size + 10);
    feats.forEach(function (k, j) {
      svg.append("text").attr("class", flagged[audit.features[k]] ? "flagged" : null)
        .attr("transform", "translate(" + (left + j * size + 14) + "," + (top - 6) + ") rotate(-60)")
        .text(audit.features[k]);
    });
    cells.forEach(function (c, i) {
      svg.append("text").attr("x", left - 6).attr("y", top + i * size + 14)
        .attr("text-anchor", "end").text(cellLabel(c));
      feats.forEach(function (k, j) {
        svg.append("rect").attr("x", left + j * size).attr("y", top + i * size)
          .attr("width", size - 1).attr("height", size - 1).style("fill", color(c.attention[k]))
          .append("title").text(c.value + ", " + audit.features[k] + ": " + pct(c.attention[k]));
      });
    });
  }

  audit.columns.forEach(function (column) {
    var s = section((column.intersection ? "Intersection " : "Column ") + column.column);
    var gaps = column.between_cells;
    s.append("p").attr("class", "gaps").text([
      gapText("AUC gap", gaps.auc_gap),
      gapText("demographic parity difference", gaps.demographic_parity_difference),
      gapText("equalized odds difference", gaps.equalized_odds_difference)].join(" \u00b7 "));
    s.append("h3").text("AUC per group (line: whole split)");
    aucChart(s, column);
    if (audit.modalities.length > 1) {
      s.append("h3").text("Mean modality weight \u03b2 per group");
      betaChart(s, column);
    }
    if (audit.features.length) {
      s.append("h3").text("Attention share per feature and group");
      heatmap(s, column);
    }
    table(s, ["group", "n", "prevalence", "AUC", "accuracy", "TPR", "FPR", "selection", "ECE",
              "JSD vs rest (bits)", "top features"],
          column.cells.map(function (c) {
            if (c.suppressed) return [c.value, "suppressed", c.reason, "", "", "", "", "", "", "", ""];
            return [c.value, c.n, num(c.prevalence), num(c.auc), num(c.accuracy), num(c.tpr),
                    num(c.fpr), num(c.selection_rate), num(c.ece),
                    c.jsd_vs_rest_bits === undefined ? "n/a" : f4(c.jsd_vs_rest_bits),
                    (c.top_features || []).map(function (t) {
                      return t.feature + " " + pct(t.share);
                    }).join(", ")];
          })).attr("class", "cells");
  });
  document.body.setAttribute("data-rendered", "true");
})();
