# The libraries every part of Attune but the LibTorch code needs (Debian's
# packages, scripts/setup.sh), for the main build and the fuzz build.
find_package(Threads REQUIRED)
find_package(Protobuf REQUIRED)
find_package(gRPC CONFIG REQUIRED)
find_package(OpenSSL 3 REQUIRED)
find_package(RocksDB CONFIG REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(spdlog REQUIRED)
if(TARGET RocksDB::rocksdb-shared)
  set(ATTUNE_ROCKSDB RocksDB::rocksdb-shared)
else()
  set(ATTUNE_ROCKSDB RocksDB::rocksdb)
endif()
