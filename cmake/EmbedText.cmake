# cmake -DIN=file -DOUT=file.cc -DNAME=kSymbol -P EmbedText.cmake
# Writes OUT defining `extern const unsigned char NAME[]` (namespace attune::assets):
# the bytes of IN, NUL-terminated. Run at build time, so edits to IN rebuild.
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" len)
math(EXPR bytes "${len} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" body "${body}")
get_filename_component(base "${IN}" NAME)
file(WRITE "${OUT}.tmp"
  "// Generated from ${base} by cmake/EmbedText.cmake: do not edit.\n"
  "namespace attune::assets {\n"
  "extern const unsigned char ${NAME}[];\n"
  "extern const unsigned long ${NAME}Size;\n"
  "const unsigned char ${NAME}[] = {\n${body}0x00};\n"
  "const unsigned long ${NAME}Size = ${bytes};\n"
  "}  // namespace attune::assets\n")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUT}.tmp")
