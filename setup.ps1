<#
.SYNOPSIS
    From an Azure subscription to a ready penguin-lab cluster: workspace, cluster and notebooks.

.DESCRIPTION
    Run in Azure Cloud Shell (PowerShell) from a clone of this repository.
    1. Registers the resource providers and picks a region where the subscription has quota.
    2. Creates the resource group msl-<suffix> and the premium workspace databricks-<suffix>,
       or reuses the lab's resource group and workspace found from an earlier run.
    3. Through the Databricks REST API, creates (or reuses) the single-node cluster described in
       databricks/cluster.json, the file `penguin-lab databricks up` reads too, and imports the
       notebooks, the package and the data (or creates a Git folder when a Git URL is set).
    Running it again reuses what exists.

.PARAMETER Region
    Azure region for a new workspace, e.g. eastus. Wins over the automatic choice.

.PARAMETER ResourceGroupName
    Resource group to use (created if missing). Its first Databricks workspace is reused.

.PARAMETER SkipCluster
    Do not create or start the cluster; only the workspace and the notebooks.

.PARAMETER GitUrl
    Create a Git folder from this URL instead of importing the files (default: workspace.git_url in cluster.json).

.EXAMPLE
    ./setup.ps1
.EXAMPLE
    ./setup.ps1 -Region westeurope -WhatIf
#>
[CmdletBinding(SupportsShouldProcess)]
param(
    [string]$Region,
    [string]$ResourceGroupName,
    [switch]$SkipCluster,
    [string]$GitUrl
)

$ErrorActionPreference = 'Stop'

$databricksAppId = '2ff814a6-3304-4ab8-85cb-cd0e6f879c1d'  # Azure Databricks, the resource a Microsoft Entra token is asked for
$labTag = @{ project = 'penguin-lab' }                      # marks the resource group this script created
$requiredFreeVcpus = 8                                      # the 4-vCPU driver plus room to restart it
$settings = Get-Content -Raw -Path (Join-Path $PSScriptRoot 'databricks/cluster.json') | ConvertFrom-Json -AsHashtable
$nodeType = $settings.cluster.node_type_id

Write-Host "Starting at $(Get-Date)"

# --- Subscription ---------------------------------------------------------------------------

$subscriptions = @(Get-AzSubscription)
if ($subscriptions.Count -gt 1) {
    Write-Host 'You have several Azure subscriptions:'
    for ($i = 0; $i -lt $subscriptions.Count; $i++) {
        Write-Host "[$i]: $($subscriptions[$i].Name) (ID = $($subscriptions[$i].Id))"
    }
    do {
        $answer = Read-Host "Enter 0 to $($subscriptions.Count - 1)"
    } until ($answer -match '^\d+$' -and [int]$answer -lt $subscriptions.Count)
    # Choosing the subscription changes nothing in Azure, and -WhatIf should report on the chosen one.
    Set-AzContext -SubscriptionId $subscriptions[[int]$answer].Id -WhatIf:$false | Out-Null
}

# --- Resource providers ---------------------------------------------------------------------

foreach ($provider in 'Microsoft.Storage', 'Microsoft.Compute', 'Microsoft.Databricks') {
    if ($PSCmdlet.ShouldProcess($provider, 'Register resource provider')) {
        $state = (Register-AzResourceProvider -ProviderNamespace $provider).RegistrationState
        Write-Host "$provider : $state"
    }
}

# --- Region ---------------------------------------------------------------------------------

function Test-RegionCapacity([string]$Location) {
    # True when the region offers the cluster's VM size to this subscription with enough free vCPUs.
    $sku = Get-AzComputeResourceSku -Location $Location |
        Where-Object { $_.ResourceType -eq 'virtualMachines' -and $_.Name -eq $nodeType } |
        Select-Object -First 1
    if (-not $sku) {
        Write-Host "$Location does not offer $nodeType."
        return $false
    }
    if ($sku.Restrictions | Where-Object { $_.Type -eq 'Location' }) {
        Write-Host "$nodeType is restricted for this subscription in $Location."
        return $false
    }
    $usage = Get-AzVMUsage -Location $Location
    foreach ($quotaName in $sku.Family, 'cores') {
        # The VM family's quota (e.g. standardDDSv5Family) and the region's total vCPUs.
        $quota = $usage | Where-Object { $_.Name.Value -eq $quotaName } | Select-Object -First 1
        if (-not $quota -or ($quota.Limit - $quota.CurrentValue) -lt $requiredFreeVcpus) {
            Write-Host "$Location has fewer than $requiredFreeVcpus free vCPUs in quota $quotaName."
            return $false
        }
    }
    return $true
}

function Select-Region {
    $candidates = @(Get-AzLocation | Where-Object {
        $_.Providers -contains 'Microsoft.Databricks' -and $_.Providers -contains 'Microsoft.Compute'
    })
    if (-not $candidates) { throw 'No region offers Azure Databricks to this subscription.' }
    # A random order spreads a class of learners over several regions.
    foreach ($candidate in ($candidates | Get-Random -Count $candidates.Count)) {
        Write-Host "Trying $($candidate.Location)..."
        if (Test-RegionCapacity $candidate.Location) {
            return $candidate.Location
        }
    }
    throw "No region offers $requiredFreeVcpus free vCPUs of $nodeType to this subscription: ask for more quota, or pass -Region."
}

# --- Resource group and workspace -----------------------------------------------------------

if ($ResourceGroupName) {
    $group = Get-AzResourceGroup -Name $ResourceGroupName -ErrorAction SilentlyContinue
} else {
    $groups = @(Get-AzResourceGroup -Tag $labTag)
    if ($groups.Count -gt 1) {
        throw "Several resource groups are tagged project=penguin-lab ($($groups.ResourceGroupName -join ', ')): pass -ResourceGroupName."
    }
    $group = $groups | Select-Object -First 1
}
$workspace = $null
if ($group) {
    Write-Host "Using resource group $($group.ResourceGroupName) ($($group.Location))."
    $workspace = Get-AzDatabricksWorkspace -ResourceGroupName $group.ResourceGroupName | Select-Object -First 1
}

if ($workspace) {
    Write-Host "Reusing workspace $($workspace.Name)."
} else {
    if (-not $Region) {
        $Region = Select-Region
    } elseif (-not (Test-RegionCapacity $Region)) {
        Write-Warning "Going on in $Region because it was asked for; the cluster may fail to start."
    }
    $suffix = -join ((48..57) + (97..122) | Get-Random -Count 7 | ForEach-Object { [char]$_ })
    if (-not $group) {
        $newGroupName = if ($ResourceGroupName) { $ResourceGroupName } else { "msl-$suffix" }
        if ($PSCmdlet.ShouldProcess($newGroupName, "Create resource group in $Region")) {
            $group = New-AzResourceGroup -Name $newGroupName -Location $Region -Tag $labTag
        }
    }
    $workspaceName = "databricks-$suffix"
    if ($group -and $PSCmdlet.ShouldProcess($workspaceName, "Create premium Azure Databricks workspace in $Region")) {
        Write-Host "Creating $workspaceName in $($group.ResourceGroupName); this takes a few minutes..."
        New-AzDatabricksWorkspace -Name $workspaceName -ResourceGroupName $group.ResourceGroupName -Location $Region -Sku premium | Out-Null
        $workspace = Get-AzDatabricksWorkspace -Name $workspaceName -ResourceGroupName $group.ResourceGroupName
    }
}
if (-not $workspace) {
    Write-Host 'The workspace does not exist yet, so the cluster and notebook steps are skipped.'
    return
}

while ($workspace.ProvisioningState -ne 'Succeeded') {
    if ($workspace.ProvisioningState -in 'Failed', 'Canceled', 'Deleting') {
        throw "Workspace $($workspace.Name) is $($workspace.ProvisioningState)."
    }
    Write-Host "Waiting for workspace $($workspace.Name) ($($workspace.ProvisioningState))..."
    Start-Sleep -Seconds 20
    $workspace = Get-AzDatabricksWorkspace -Name $workspace.Name -ResourceGroupName $group.ResourceGroupName
}
$workspaceUrl = "https://$($workspace.Url)"

# --- Databricks REST API --------------------------------------------------------------------

$token = (Get-AzAccessToken -ResourceUrl $databricksAppId).Token
if ($token -is [string]) {
    # Az.Accounts before 5.0 gives the token as plain text; Invoke-RestMethod -Token wants a SecureString.
    $token = ConvertTo-SecureString $token -AsPlainText -Force
}

function Invoke-Databricks([string]$Method, [string]$Path, $Body, [switch]$AllowNotFound) {
    $request = @{
        Method         = $Method
        Uri            = "$workspaceUrl$Path"
        Authentication = 'Bearer'
        Token          = $token
        # Lets the workspace add its Azure owner as a user on the first call.
        Headers        = @{ 'X-Databricks-Azure-Workspace-Resource-Id' = $workspace.Id }
    }
    if ($Body -and $Method -eq 'GET') {
        $request.Body = $Body  # a hashtable becomes the query string
    } elseif ($Body) {
        $request.Body = $Body | ConvertTo-Json -Depth 10
        $request.ContentType = 'application/json'
    }
    try {
        Invoke-RestMethod @request
    } catch {
        if ($AllowNotFound -and [int]$_.Exception.Response.StatusCode -eq 404) {
            return $null
        }
        throw
    }
}

function Select-SparkVersion($Versions, $Rule) {
    # The newest runtime that fits the rule in cluster.json; the same rule as choose_spark_version in penguin_lab/workspace.py.
    $fits = foreach ($version in $Versions) {
        if (-not ($version.key -match '^(\d+)\.(\d+)\.x-')) { continue }  # apache-spark-*, custom:* and the like
        $number = [version]"$($Matches[1]).$($Matches[2])"
        if ($version.key -match '-(photon|aarch64|hls)-' -or $version.name -match '\bbeta\b') { continue }
        if (($version.key -like '*-ml-*') -ne $Rule.ml -or ($version.key -like '*-gpu-*') -ne $Rule.gpu) { continue }
        if ($Rule.lts -and $version.name -notmatch '\bLTS\b') { continue }
        if ($Rule.min_version -and $number -lt [version]$Rule.min_version) { continue }
        if ($Rule.max_version -and $number -gt [version]$Rule.max_version) { continue }
        [pscustomobject]@{ Number = $number; Key = $version.key }
    }
    $newest = $fits | Sort-Object -Property Number, Key -Descending | Select-Object -First 1
    if (-not $newest) { throw 'This workspace offers no Databricks runtime that fits runtime in cluster.json.' }
    return $newest.Key
}

function Find-OwnCluster([string]$Name, [string]$Owner) {
    # Only the signed-in user's cluster: a colleague's cluster of the same name is not ours to reuse.
    $query = $null
    do {
        $page = Invoke-Databricks GET '/api/2.1/clusters/list' $query
        $mine = $page.clusters | Where-Object { $_.cluster_name -eq $Name -and $_.creator_user_name -eq $Owner } | Select-Object -First 1
        if ($mine) { return $mine }
        $query = @{ page_token = $page.next_page_token }
    } while ($page.next_page_token)
    return $null
}

$me = (Invoke-Databricks GET '/api/2.0/preview/scim/v2/Me').userName
$clusterName = $settings.cluster.cluster_name

# --- Cluster --------------------------------------------------------------------------------

if (-not $SkipCluster) {
    $cluster = Find-OwnCluster $clusterName $me
    if ($cluster) {
        Write-Host "Reusing cluster $clusterName ($($cluster.cluster_id), $($cluster.state))."
        if ($cluster.state -eq 'TERMINATED' -and $PSCmdlet.ShouldProcess($clusterName, 'Start cluster')) {
            Invoke-Databricks POST '/api/2.1/clusters/start' @{ cluster_id = $cluster.cluster_id } | Out-Null
        }
    } else {
        $versions = (Invoke-Databricks GET '/api/2.1/clusters/spark-versions').versions
        $clusterBody = $settings.cluster.Clone()
        $clusterBody.spark_version = Select-SparkVersion $versions $settings.runtime
        $clusterBody.single_user_name = $me
        if ($PSCmdlet.ShouldProcess($clusterName, "Create cluster with runtime $($clusterBody.spark_version)")) {
            $created = Invoke-Databricks POST '/api/2.1/clusters/create' $clusterBody
            Write-Host "Created cluster $clusterName ($($created.cluster_id)); it is starting."
        }
    }
}

# --- Notebooks ------------------------------------------------------------------------------

$workspaceDir = $settings.workspace.dir.Replace('{user}', $me).TrimEnd('/')
if (-not $GitUrl) { $GitUrl = $settings.workspace.git_url }
$folder = Invoke-Databricks GET '/api/2.0/workspace/get-status' @{ path = $workspaceDir } -AllowNotFound
$gitFolder = $null
if ($folder) {
    # Git folders may show as REPO or as DIRECTORY; the Repos API knows.
    $gitFolder = Invoke-Databricks GET "/api/2.0/repos/$($folder.object_id)" -AllowNotFound
}

if ($gitFolder) {
    Write-Host "Reusing Git folder $workspaceDir ($($gitFolder.url))."
} elseif ($GitUrl) {
    if ($folder) { throw "$workspaceDir exists and is not a Git folder: remove it or change workspace.dir in cluster.json." }
    if ($PSCmdlet.ShouldProcess($workspaceDir, "Create Git folder from $GitUrl")) {
        # A new user's home folder may not exist yet.
        Invoke-Databricks POST '/api/2.0/workspace/mkdirs' @{ path = $workspaceDir.Substring(0, $workspaceDir.LastIndexOf('/')) } | Out-Null
        $repoBody = @{ url = $GitUrl; provider = $settings.workspace.git_provider; path = $workspaceDir }
        Invoke-Databricks POST '/api/2.0/repos' $repoBody | Out-Null
    }
} else {
    # The same layout as the repository, so that the notebooks find the package at the folder's root.
    $uploads = foreach ($kind in 'notebooks', 'files') {
        foreach ($pattern in $settings.workspace[$kind]) {
            $matched = @(Get-ChildItem -Path (Join-Path $PSScriptRoot $pattern) -File)
            if (-not $matched) { throw "No file matches $pattern under $PSScriptRoot." }
            foreach ($file in $matched) {
                $relative = [IO.Path]::GetRelativePath($PSScriptRoot, $file.FullName).Replace('\', '/')
                $target = "$workspaceDir/$relative"
                if ($kind -eq 'notebooks') { $target = $target -replace '\.py$', '' }  # notebooks have no extension in the workspace
                [pscustomobject]@{ File = $file; Target = $target; IsNotebook = ($kind -eq 'notebooks') }
            }
        }
    }
    if ($PSCmdlet.ShouldProcess($workspaceDir, "Import $(@($uploads).Count) files")) {
        foreach ($directory in ($uploads.Target | ForEach-Object { $_.Substring(0, $_.LastIndexOf('/')) } | Sort-Object -Unique)) {
            Invoke-Databricks POST '/api/2.0/workspace/mkdirs' @{ path = $directory } | Out-Null
        }
        foreach ($upload in $uploads) {
            $importBody = @{
                path      = $upload.Target
                content   = [Convert]::ToBase64String([IO.File]::ReadAllBytes($upload.File.FullName))
                overwrite = $true
            }
            if ($upload.IsNotebook) {
                $importBody.format = 'SOURCE'
                $importBody.language = 'PYTHON'
            } else {
                $importBody.format = 'AUTO'
            }
            Invoke-Databricks POST '/api/2.0/workspace/import' $importBody | Out-Null
        }
        Write-Host "Imported $(@($uploads).Count) files into $workspaceDir."
    }
}

Write-Host ''
Write-Host "Workspace: $workspaceUrl"
Write-Host "Cluster:   $(if ($SkipCluster) { '(skipped)' } else { $clusterName })"
Write-Host "Notebooks: $workspaceDir"
Write-Host "Finished at $(Get-Date)"
