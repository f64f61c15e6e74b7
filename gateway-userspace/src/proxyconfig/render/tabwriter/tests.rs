use super::format;

#[test]
fn pads_columns_but_not_the_last_cell() {
    // As Go prints it: tabwriter.NewWriter(os.Stdout, 0, 8, 1, ' ', 0).
    let t = "ADDRESSES\tPORT\tMATCH\tDESTINATION\n0.0.0.0\t80\tALL\tRoute: http.80\n";
    assert_eq!(
        format(t, 0, 1),
        "ADDRESSES PORT MATCH DESTINATION\n0.0.0.0   80   ALL   Route: http.80\n"
    );
}

#[test]
fn an_empty_last_cell_leaves_the_padding_of_the_column_before() {
    let t = "A\tTYPE\tDR\nx\tEDS\t\n";
    assert_eq!(format(t, 0, 5), "A     TYPE     DR\nx     EDS      \n");
}

#[test]
fn blocks_end_where_a_line_lacks_the_column() {
    // Lines 1-2 share column 0; line 3 has one cell (flush); line 4 starts anew.
    let t = "aaaa\tb\nc\td\nplain\nx\ty\n";
    assert_eq!(format(t, 0, 1), "aaaa b\nc    d\nplain\nx y\n");
    // minwidth applies to every column block.
    assert_eq!(format("a\tb\n", 4, 1), "a   b\n");
    // No trailing newline: none added.
    assert_eq!(format("a\tb", 0, 1), "a b");
}
