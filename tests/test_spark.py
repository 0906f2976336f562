"""The embedded Spark session's JVM options and its class-data archive."""

import sys

from penguin_lab import spark as spark_module


def test_the_archive_is_used_when_present_and_recorded_on_request(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    assert "SharedArchiveFile" not in spark_module.java_options()
    archive = spark_module.class_archive()
    assert archive.parent == tmp_path
    archive.write_bytes(b"x")
    assert f"-XX:SharedArchiveFile={archive}" in spark_module.java_options()
    recording = spark_module.java_options(record_archive=tmp_path / "new.jsa")
    assert f"-XX:ArchiveClassesAtExit={tmp_path / 'new.jsa'}" in recording
    assert "SharedArchiveFile" not in recording


def test_embedded_session_is_local_quiet_and_has_arrow(spark):
    conf = spark.sparkContext.getConf()
    assert spark.sparkContext.master.startswith("local")
    assert conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
    assert "log4j2.properties" in conf.get("spark.driver.extraJavaOptions")
