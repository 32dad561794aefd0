# The fuzz targets (fuzz/targets/<name>.cc), for fuzz/CMakeLists.txt and for
# the main build's short runs (tests/CMakeLists.txt).
set(ATTUNE_FUZZ_TARGETS
    model_stream wire_messages chunk_pieces audit_report eval_words secagg_messages study_config
    site_config npy png csv npz importer_rows)
