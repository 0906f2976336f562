"""setup.ps1 and teardown.ps1, checked by reading them: PowerShell cannot run here.

The checks tie the scripts to what the Python twin does: the same settings file, the same REST
endpoints (penguin_lab.workspace.UP_ENDPOINTS, which test_workspace.py checks against the twin's
real requests), the same runtime rule. A cheap scanner checks that brackets balance outside
strings and comments, and that every change to Azure or the workspace sits under ShouldProcess.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from penguin_lab import workspace

REPO_ROOT = Path(__file__).resolve().parent.parent
SETUP = (REPO_ROOT / "setup.ps1").read_text(encoding="utf-8")
TEARDOWN = (REPO_ROOT / "teardown.ps1").read_text(encoding="utf-8")
SETTINGS = json.loads((REPO_ROOT / "databricks" / "cluster.json").read_text(encoding="utf-8"))
DATABRICKS_APP_ID = "2ff814a6-3304-4ab8-85cb-cd0e6f879c1d"


# ============================================================================================
# A small PowerShell scanner: brackets outside comments and strings
# ============================================================================================

OPENERS, CLOSERS = "([{", ")]}"


def scan_brackets(text: str) -> list[tuple[str, int, int]]:
    """(bracket, offset, line) for each bracket of code, in order.

    Skips comments (# and <# #>), single-quoted strings and here-strings, and the text of
    double-quoted strings; code in a "$(...)" subexpression counts as code.
    """
    found = []
    modes = ["code"]  # "code", "string" (double-quoted) or "sub" (a subexpression inside a string)
    sub_depths = []  # open parentheses inside each subexpression
    i, line = 0, 1

    def advance_to(end: int) -> int:
        nonlocal line
        line += text.count("\n", i, end)
        return end

    while i < len(text):
        char, mode = text[i], modes[-1]
        if mode == "string":
            if char == "`":
                i = advance_to(i + 2)
            elif text.startswith('""', i):
                i += 2
            elif char == '"':
                modes.pop()
                i += 1
            elif text.startswith("$(", i):
                modes.append("sub")
                sub_depths.append(0)
                i += 2
            else:
                i = advance_to(i + 1)
            continue
        # code or subexpression
        if text.startswith("<#", i):
            end = text.find("#>", i)
            i = advance_to(len(text) if end < 0 else end + 2)
        elif char == "#":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif text.startswith("@'\n", i) or text.startswith("@\"\n", i):
            closing = "\n" + text[i + 1] + "@"
            end = text.find(closing, i + 2)
            i = advance_to(len(text) if end < 0 else end + len(closing))
        elif char == "'":
            j = i + 1
            while j < len(text):
                if text.startswith("''", j):
                    j += 2
                elif text[j] == "'":
                    break
                else:
                    j += 1
            i = advance_to(j + 1)
        elif char == '"':
            modes.append("string")
            i += 1
        elif mode == "sub" and char == ")" and sub_depths[-1] == 0:
            modes.pop()
            sub_depths.pop()
            i += 1
        else:
            if char in OPENERS or char in CLOSERS:
                found.append((char, i, line))
                if mode == "sub" and char in "()":
                    sub_depths[-1] += 1 if char == "(" else -1
            i = advance_to(i + 1)
    if modes != ["code"]:
        found.append(("<unclosed string>", len(text), line))
    return found


def bracket_problems(text: str) -> list[str]:
    """Mismatched, unclosed or extra brackets, each with its line."""
    problems, stack = [], []
    for char, _, line in scan_brackets(text):
        if char in OPENERS:
            stack.append((char, line))
        elif char in CLOSERS:
            if not stack:
                problems.append(f"line {line}: {char} closes nothing")
            elif OPENERS.index(stack[-1][0]) != CLOSERS.index(char):
                problems.append(f"line {line}: {char} closes {stack[-1][0]} of line {stack[-1][1]}")
                stack.pop()
            else:
                stack.pop()
        else:
            problems.append(f"line {line}: {char}")
    problems += [f"line {line}: {char} never closed" for char, line in stack]
    return problems


def enclosing_block_openers(text: str, offset: int) -> list[str]:
    """The lines that open the { } blocks around `offset`, outermost first."""
    stack = []
    for char, position, _ in scan_brackets(text):
        if position >= offset:
            break
        if char == "{":
            stack.append(position)
        elif char == "}" and stack:
            stack.pop()
    return [text[text.rfind("\n", 0, p) + 1 : p + 1] for p in stack]


def test_brackets_balance_in_both_scripts():
    assert bracket_problems(SETUP) == []
    assert bracket_problems(TEARDOWN) == []


@pytest.mark.parametrize(
    "snippet, problem",
    [
        ("if ($a) { Write-Host 'x'", "line 1: { never closed"),
        ("foreach ($x in $y)) { }", "line 1: ) closes nothing"),
        ("$h = @{ a = (1 }\n", "line 1: } closes ( of line 1"),
        ('Write-Host "unterminated', "line 1: <unclosed string>"),
    ],
)
def test_the_bracket_check_finds_broken_code(snippet, problem):
    assert problem in bracket_problems(snippet)


def test_the_bracket_check_ignores_strings_and_comments_but_reads_subexpressions():
    clean = (
        "# a comment (\n"
        "<# a block { comment #>\n"
        "$a = 'it''s ( here'\n"
        '$b = "quote `" ( and $($c.Count + (1)) )"\n'
        "$d = @'\n{ here-string\n'@\n"
    )
    assert bracket_problems(clean) == []
    assert bracket_problems('$b = "$($c.Count + (1)"') != []  # the subexpression's own parentheses count


# ============================================================================================
# Parameters and ShouldProcess
# ============================================================================================


def param_block(text: str) -> str:
    start = re.search(r"^param\s*\(", text, re.MULTILINE)
    assert start, "no param( ) block"
    depth = 0
    for char, position, _ in scan_brackets(text[start.end() - 1 :]):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return text[start.end() : start.end() - 1 + position]
    raise AssertionError("param( ) block never closes")


def declared_parameters(text: str) -> dict[str, str]:
    return dict((name, kind) for kind, name in re.findall(r"\[(\w+)\]\s*\$(\w+)", param_block(text)))


def test_setup_declares_region_resource_group_and_skip_cluster():
    parameters = declared_parameters(SETUP)
    assert parameters["Region"] == "string"
    assert parameters["ResourceGroupName"] == "string"
    assert parameters["SkipCluster"] == "switch"
    assert "WhatIf" not in parameters  # it comes from SupportsShouldProcess


def test_setup_supports_whatif_before_its_param_block():
    binding = re.search(r"\[CmdletBinding\(SupportsShouldProcess\)\]\s*param\s*\(", SETUP)
    assert binding, "[CmdletBinding(SupportsShouldProcess)] must stand right before param("


CHANGES = re.compile(
    r"Register-AzResourceProvider|New-AzResourceGroup|New-AzDatabricksWorkspace|Remove-Az\w+|Invoke-Databricks\s+(POST|DELETE)"
)


def test_every_change_in_setup_waits_for_should_process():
    changes = [m for m in CHANGES.finditer(SETUP) if not SETUP[: m.start()].rstrip().endswith("function")]
    assert len(changes) >= 8
    for change in changes:
        line = SETUP.count("\n", 0, change.start()) + 1
        openers = enclosing_block_openers(SETUP, change.start())
        assert any("$PSCmdlet.ShouldProcess(" in opener for opener in openers), (
            f"setup.ps1 line {line}: {change.group(0)} runs even with -WhatIf"
        )


def test_the_should_process_check_catches_an_unguarded_change():
    unguarded = "if ($x) {\n    Invoke-Databricks POST '/api/2.1/clusters/create' $body\n}\n"
    change = CHANGES.search(unguarded)
    assert not any("ShouldProcess" in opener for opener in enclosing_block_openers(unguarded, change.start()))


def test_teardown_asks_before_terminating_or_deleting():
    assert re.search(r"\[CmdletBinding\(SupportsShouldProcess, ConfirmImpact = 'High'\)\]\s*param\s*\(", TEARDOWN)
    assert declared_parameters(TEARDOWN) == {"ResourceGroupName": "string"}
    guard = re.search(r"if \(-not \$PSCmdlet\.ShouldProcess\([^\n]*\)\) \{\s*return\s*\}", TEARDOWN)
    assert guard, "teardown.ps1 must stop when the user does not confirm"
    for change in ("/api/2.1/clusters/delete", "Remove-AzResourceGroup"):
        assert guard.end() < TEARDOWN.index(change), f"{change} comes before the confirmation"


def test_teardown_deletes_only_the_resource_group_setup_created():
    assert "New-AzResourceGroup -Name $newGroupName -Location $Region -Tag $labTag" in SETUP
    tag = re.search(r"\$labTag = (@\{[^}]*\})", SETUP)[1]
    assert f"$labTag = {tag}" in TEARDOWN
    removal = TEARDOWN.index("Remove-AzResourceGroup")
    assert any("if ($createdBySetup)" in opener for opener in enclosing_block_openers(TEARDOWN, removal))


# ============================================================================================
# Settings and endpoints shared with the Python twin
# ============================================================================================


def settings_paths(text: str) -> set[tuple[str, ...]]:
    """Each $settings.a.b chain the script reads, method calls left out."""
    chains = set()
    for match in re.finditer(r"\$settings((?:\.[A-Za-z_]\w*)+)(\()?", text):
        names = tuple(match[1].lstrip(".").split("."))
        chains.add(names[:-1] if match[2] else names)
    return chains


@pytest.mark.parametrize("script", [SETUP, TEARDOWN], ids=["setup", "teardown"])
def test_the_scripts_read_cluster_json_and_only_keys_it_has(script):
    assert re.search(
        r"Get-Content -Raw -Path \(Join-Path \$PSScriptRoot 'databricks/cluster\.json'\) \| ConvertFrom-Json -AsHashtable",
        script,
    )
    for chain in settings_paths(script):
        node = SETTINGS
        for name in chain:
            assert isinstance(node, dict) and name in node, f"$settings.{'.'.join(chain)} is not in cluster.json"
            node = node[name]
    assert ("cluster", "cluster_name") in settings_paths(script)


def test_setup_reads_every_section_the_twin_reads():
    sections = {chain[0] for chain in settings_paths(SETUP)}
    assert sections == {"cluster", "runtime", "workspace"}
    assert "foreach ($kind in 'notebooks', 'files')" in SETUP and "$settings.workspace[$kind]" in SETUP
    # The create body is the JSON's cluster object plus the runtime and the user, as in the twin.
    assert "$clusterBody = $settings.cluster.Clone()" in SETUP
    assert "$clusterBody.spark_version = Select-SparkVersion $versions $settings.runtime" in SETUP
    assert "$clusterBody.single_user_name = $me" in SETUP


def script_endpoints(text: str) -> set[tuple[str, str]]:
    calls = set()
    for method, _, path in re.findall(r"Invoke-Databricks\s+(GET|POST|DELETE)\s+(['\"])(.*?)\2", text):
        calls.add((method, re.sub(r"\$\([^)]*\)|\$\w+", "{}", path)))
    return calls


def normalised(endpoints) -> set[tuple[str, str]]:
    return {(method, re.sub(r"\{\w+\}", "{}", path)) for method, path in endpoints}


def test_setup_calls_the_endpoints_the_python_twin_calls():
    assert script_endpoints(SETUP) == normalised(workspace.UP_ENDPOINTS)
    # and calls the REST API nowhere else
    assert len(re.findall(r"/api/2\.\d/", SETUP)) == len(re.findall(r"Invoke-Databricks\s+(GET|POST|DELETE)\s", SETUP))


def test_the_endpoint_reader_sees_a_missing_call():
    without_import = SETUP.replace("Invoke-Databricks POST '/api/2.0/workspace/import'", "Write-Host 'skipped'")
    assert script_endpoints(without_import) != normalised(workspace.UP_ENDPOINTS)


def test_teardown_terminates_through_the_clusters_api():
    paths = set(re.findall(r"/api/2\.\d/[\w/\-]+", TEARDOWN))
    assert paths == {"/api/2.0/preview/scim/v2/Me", "/api/2.1/clusters/list", "/api/2.1/clusters/delete"}
    assert re.search(r"-Method POST -Uri \"\$workspaceUrl/api/2\.1/clusters/delete\"", TEARDOWN)


def test_setup_bodies_match_what_the_twin_sends():
    assert "@{ url = $GitUrl; provider = $settings.workspace.git_provider; path = $workspaceDir }" in SETUP
    assert "overwrite = $true" in SETUP
    assert "$importBody.format = 'SOURCE'" in SETUP and "$importBody.language = 'PYTHON'" in SETUP
    assert "$importBody.format = 'AUTO'" in SETUP
    assert "$target -replace '\\.py$', ''" in SETUP  # notebooks lose .py, as in the twin
    assert "@{ cluster_id = $cluster.cluster_id }" in SETUP


def test_setup_and_twin_choose_the_runtime_with_the_same_patterns():
    python_source = Path(workspace.__file__).read_text(encoding="utf-8")
    select = SETUP[SETUP.index("function Select-SparkVersion") :]
    select = select[: select.index("\n}\n")]
    for piece in (r"^(\d+)\.(\d+)\.x-", r"-(photon|aarch64|hls)-", r"\bbeta\b", r"\bLTS\b"):
        assert piece in select, f"setup.ps1 Select-SparkVersion lacks {piece}"
        assert piece in python_source, f"workspace.py lacks {piece}"
    for rule_key in SETTINGS["runtime"]:
        assert f"$Rule.{rule_key}" in select
    assert "Sort-Object -Property Number, Key -Descending" in select


# ============================================================================================
# Azure: providers, region, names, token
# ============================================================================================


def test_setup_registers_the_three_resource_providers():
    loop = re.search(r"foreach \(\$provider in ([^)]*)\)", SETUP)
    assert loop and re.findall(r"'([\w.]+)'", loop[1]) == ["Microsoft.Storage", "Microsoft.Compute", "Microsoft.Databricks"]
    assert "Register-AzResourceProvider -ProviderNamespace $provider" in SETUP


def test_setup_needs_8_free_vcpus_of_the_cluster_node_family():
    assert SETTINGS["cluster"]["node_type_id"] == "Standard_D4ds_v5"
    assert re.search(r"^\$requiredFreeVcpus = 8\b", SETUP, re.MULTILINE)
    assert "$nodeType = $settings.cluster.node_type_id" in SETUP
    capacity = SETUP[SETUP.index("function Test-RegionCapacity") :]
    capacity = capacity[: capacity.index("\n}\n")]
    assert "Get-AzComputeResourceSku -Location $Location" in capacity and "$_.Name -eq $nodeType" in capacity
    assert "Get-AzVMUsage -Location $Location" in capacity
    assert "foreach ($quotaName in $sku.Family, 'cores')" in capacity
    assert "($quota.Limit - $quota.CurrentValue) -lt $requiredFreeVcpus" in capacity
    assert "$_.Providers -contains 'Microsoft.Databricks'" in SETUP


def test_a_region_parameter_wins_over_the_automatic_choice():
    assert re.search(r"if \(-not \$Region\) \{\s*\$Region = Select-Region\s*\}", SETUP)


def test_setup_names_resources_as_the_lab_does():
    assert "Get-Random -Count 7" in SETUP
    assert '"msl-$suffix"' in SETUP and '"databricks-$suffix"' in SETUP
    assert "New-AzDatabricksWorkspace -Name $workspaceName" in SETUP and "-Sku premium" in SETUP


def test_setup_waits_for_the_workspace_then_asks_entra_for_a_databricks_token():
    wait = SETUP.index("while ($workspace.ProvisioningState -ne 'Succeeded')")
    token = SETUP.index("Get-AzAccessToken -ResourceUrl $databricksAppId")
    first_call = SETUP.index("Invoke-Databricks GET '/api/2.0/preview/scim/v2/Me'")
    assert wait < token < first_call
    for script in (SETUP, TEARDOWN):
        assert f"$databricksAppId = '{DATABRICKS_APP_ID}'" in script


def test_setup_prints_the_workspace_url_and_the_cluster_name_at_the_end():
    ending = SETUP[SETUP.rindex("Write-Host ''") :]
    assert "Workspace: $workspaceUrl" in ending and "$clusterName" in ending
