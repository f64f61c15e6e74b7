//! Go's `text/tabwriter`, as istioctl uses it: `Init(w, minwidth, tabwidth, padding,
//! ' ', 0)` (padding with spaces, no flags), so the tables come out byte for byte as
//! istioctl prints them.
//!
//! The rules mirrored (go/src/text/tabwriter/tabwriter.go):
//! - a cell is text terminated by a tab; the text after a line's last tab is its last
//!   cell, which never takes part in alignment (and is never padded);
//! - a *column block* is a run of consecutive lines that all have a tab-terminated cell
//!   in that column; its width is the widest cell plus `padding`, at least `minwidth`
//!   (`format`), and every cell of the block, empty ones too, is padded to it
//!   (`writeLines`/`writePadding`): so a row whose last cell is empty ends in spaces;
//! - a line with a single cell (no tab) flushes: the lines after it start new blocks
//!   (`Write`, "if ch == '\n' ... ncells == 1");
//! - widths count runes (`utf8.RuneCount`).

/// Formats `text` (cells separated by `\t`, lines by `\n`) as `tabwriter.Writer`
/// with `minwidth`, `padding` and pad character ' ' would.
pub fn format(text: &str, minwidth: usize, padding: usize) -> String {
    let mut out = String::new();
    let mut lines: Vec<Vec<&str>> = Vec::new();
    let mut pieces = text.split('\n').peekable();
    while let Some(line) = pieces.next() {
        let last = pieces.peek().is_none();
        let cells: Vec<&str> = line.split('\t').collect();
        let single = cells.len() == 1;
        lines.push(cells);
        if last {
            break;
        }
        // A line of one cell cannot affect later alignment: Go flushes here.
        if single {
            flush(&lines, true, minwidth, padding, &mut out);
            lines.clear();
        }
    }
    flush(&lines, false, minwidth, padding, &mut out);
    out
}

/// Writes `lines`; every line but the last ends in '\n' (the last one too when
/// `terminated`: it was followed by a newline).
fn flush(lines: &[Vec<&str>], terminated: bool, minwidth: usize, padding: usize, out: &mut String) {
    if lines.is_empty() {
        return;
    }
    let cells: Vec<Vec<usize>> = lines
        .iter()
        .map(|l| l.iter().map(|c| c.chars().count()).collect())
        .collect();
    let mut assigned: Vec<Vec<usize>> = vec![Vec::new(); lines.len()];
    let mut widths = Vec::new();
    column_blocks(
        &cells,
        &mut widths,
        0,
        lines.len(),
        &mut assigned,
        minwidth,
        padding,
    );
    for (i, line) in lines.iter().enumerate() {
        for (j, cell) in line.iter().enumerate() {
            out.push_str(cell);
            if let Some(w) = assigned[i].get(j) {
                let pad = w.saturating_sub(cells[i][j]);
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        if i + 1 < lines.len() || terminated {
            out.push('\n');
        }
    }
}

/// Go's `(*Writer).format`: finds the column blocks of column `widths.len()` in
/// `line0..line1`, and records for each line the widths in force when Go writes it.
fn column_blocks(
    cells: &[Vec<usize>],
    widths: &mut Vec<usize>,
    mut line0: usize,
    line1: usize,
    assigned: &mut [Vec<usize>],
    minwidth: usize,
    padding: usize,
) {
    let column = widths.len();
    let has_column = |l: usize| column + 1 < cells[l].len();
    let mut this = line0;
    while this < line1 {
        if !has_column(this) {
            this += 1;
            continue;
        }
        for a in &mut assigned[line0..this] {
            a.clone_from(widths);
        }
        line0 = this;
        let mut width = minwidth;
        while this < line1 && has_column(this) {
            width = width.max(cells[this][column] + padding);
            this += 1;
        }
        widths.push(width);
        column_blocks(cells, widths, line0, this, assigned, minwidth, padding);
        widths.pop();
        line0 = this;
    }
    for a in &mut assigned[line0..line1] {
        a.clone_from(widths);
    }
}

#[cfg(test)]
mod tests;
