<#
.SYNOPSIS
    Undo setup.ps1: terminate the lab cluster and delete the lab's resource group, after confirmation.

.DESCRIPTION
    Run in Azure Cloud Shell (PowerShell) from a clone of this repository.
    Terminates the signed-in user's cluster named in databricks/cluster.json, so it stops costing at
    once, then deletes the resource group with the workspace in it. A resource group that
    setup.ps1 did not create (no project=penguin-lab tag) is left in place: only the cluster is
    terminated. Asks before acting; -Confirm:$false skips the question, -WhatIf only reports.

.PARAMETER ResourceGroupName
    The lab's resource group. By default, the one resource group tagged project=penguin-lab.

.EXAMPLE
    ./teardown.ps1
#>
[CmdletBinding(SupportsShouldProcess, ConfirmImpact = 'High')]
param(
    [string]$ResourceGroupName
)

$ErrorActionPreference = 'Stop'

$databricksAppId = '2ff814a6-3304-4ab8-85cb-cd0e6f879c1d'  # Azure Databricks, the resource a Microsoft Entra token is asked for
$labTag = @{ project = 'penguin-lab' }                      # setup.ps1 tags the resource group it creates
$settings = Get-Content -Raw -Path (Join-Path $PSScriptRoot 'databricks/cluster.json') | ConvertFrom-Json -AsHashtable
$clusterName = $settings.cluster.cluster_name

if ($ResourceGroupName) {
    $group = Get-AzResourceGroup -Name $ResourceGroupName
} else {
    $groups = @(Get-AzResourceGroup -Tag $labTag)
    if ($groups.Count -ne 1) {
        throw "Found $($groups.Count) resource groups tagged project=penguin-lab: pass -ResourceGroupName."
    }
    $group = $groups[0]
}
$createdBySetup = $group.Tags -and $group.Tags['project'] -eq 'penguin-lab'
$workspace = Get-AzDatabricksWorkspace -ResourceGroupName $group.ResourceGroupName | Select-Object -First 1

$action = if ($createdBySetup) { "Terminate cluster $clusterName and delete the resource group with everything in it" } else { "Terminate cluster $clusterName" }
if (-not $PSCmdlet.ShouldProcess("resource group $($group.ResourceGroupName)", $action)) {
    return
}

if ($workspace -and $workspace.ProvisioningState -eq 'Succeeded') {
    $token = (Get-AzAccessToken -ResourceUrl $databricksAppId).Token
    if ($token -is [string]) {
        # Az.Accounts before 5.0 gives the token as plain text; Invoke-RestMethod -Token wants a SecureString.
        $token = ConvertTo-SecureString $token -AsPlainText -Force
    }
    $request = @{
        Authentication = 'Bearer'
        Token          = $token
        Headers        = @{ 'X-Databricks-Azure-Workspace-Resource-Id' = $workspace.Id }
    }
    $workspaceUrl = "https://$($workspace.Url)"
    $me = (Invoke-RestMethod @request -Method GET -Uri "$workspaceUrl/api/2.0/preview/scim/v2/Me").userName
    $pageToken = $null
    do {
        $listUri = "$workspaceUrl/api/2.1/clusters/list"
        if ($pageToken) { $listUri += "?page_token=$([uri]::EscapeDataString($pageToken))" }
        $page = Invoke-RestMethod @request -Method GET -Uri $listUri
        # Only the signed-in user's cluster: a colleague's cluster of the same name is not ours to stop.
        foreach ($cluster in $page.clusters | Where-Object { $_.cluster_name -eq $clusterName -and $_.creator_user_name -eq $me }) {
            if ($cluster.state -notin 'TERMINATED', 'TERMINATING') {
                $body = @{ cluster_id = $cluster.cluster_id } | ConvertTo-Json
                Invoke-RestMethod @request -Method POST -Uri "$workspaceUrl/api/2.1/clusters/delete" -Body $body -ContentType 'application/json' | Out-Null
                Write-Host "Terminated cluster $clusterName ($($cluster.cluster_id))."
            }
        }
        $pageToken = $page.next_page_token
    } while ($pageToken)
}

if ($createdBySetup) {
    Write-Host "Deleting resource group $($group.ResourceGroupName); this takes several minutes..."
    Remove-AzResourceGroup -Name $group.ResourceGroupName -Force | Out-Null  # already confirmed above
    Write-Host "Deleted resource group $($group.ResourceGroupName)."
} else {
    Write-Host "Resource group $($group.ResourceGroupName) was not created by setup.ps1, so it stays; delete what you no longer need in the Azure portal."
}
