# Writes OUTPUT: a C++ source holding every schema/NNNN_name.sql as a raw string, so the
# binary can run `migrate` with no files beside it. Run at build time (see relay/CMakeLists.txt).
file(GLOB files "${SCHEMA_DIR}/[0-9][0-9][0-9][0-9]_*.sql")
list(SORT files)
set(body "")
foreach(path IN LISTS files)
  get_filename_component(name "${path}" NAME_WE)
  string(SUBSTRING "${name}" 0 4 version)
  math(EXPR version "${version}")
  file(READ "${path}" sql)
  string(APPEND body "  {${version}, \"${name}\", R\"__outbox_sql__(${sql})__outbox_sql__\"},\n")
endforeach()
file(WRITE "${OUTPUT}.tmp"
"// Generated from schema/*.sql by cmake/embed_migrations.cmake. Do not edit.\n"
"#include \"pg/migrations.h\"\n\n"
"namespace outbox::pg {\n\n"
"const std::vector<Migration>& embedded_migrations() {\n"
"  static const std::vector<Migration> migrations = {\n${body}  };\n"
"  return migrations;\n}\n\n}  // namespace outbox::pg\n")
file(COPY_FILE "${OUTPUT}.tmp" "${OUTPUT}" ONLY_IF_DIFFERENT)
