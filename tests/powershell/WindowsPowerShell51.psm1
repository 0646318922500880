<#
    What Windows PowerShell 5.1 cannot run, found in a PowerShell 7 syntax tree.

    The shipped PowerShell (the runbook module, the JEA files, the service install script, the
    guest invoker) runs on Windows PowerShell 5.1 hosts and guests, but is tested here on
    PowerShell 7, whose parser accepts more. Find-PowerShell7Construct walks the tree PowerShell 7
    builds and names every construct 5.1 refuses or runs differently:

    - syntax: ?: (ternary), ??, ??=, ?. and ?[], && and || chains, `clean` blocks, a trailing
      `&` (background job), `u{...} escapes, the u/s/y/n number suffixes;
    - cmdlets that 5.1 lacks, and 7-only parameters of cmdlets it has (a name that is a prefix
      of at least 4 letters of a 7-only parameter counts: PowerShell accepts abbreviations);
    - -Encoding values 5.1 does not know (utf8NoBOM, utf8BOM, ansi) or 7 dropped (Byte);
    - Join-Path with more than one child path (-AdditionalChildPath is 6.0);
    - the 6.0+ automatic variables ($IsWindows, ...), which are simply $null on 5.1;
    - single-quoted here-strings that parse as PowerShell are checked too: the guest invoker
      carries the script it runs in the guest as one.

    The lists are what this code base could plausibly use, not every difference; they grow when
    a new construct appears.
#>

Set-StrictMode -Version 3.0

$script:CmdletsNotIn51 = @(
    'Join-String', 'Get-Error', 'Test-Json', 'ConvertFrom-Markdown', 'Show-Markdown', 'Get-MarkdownOption',
    'Set-MarkdownOption', 'Remove-Alias', 'Remove-Service', 'Get-Uptime', 'Get-SecureRandom',
    'ConvertTo-CliXml', 'ConvertFrom-CliXml', 'Get-PSSubsystem',
    'Enable-ExperimentalFeature', 'Disable-ExperimentalFeature', 'Get-ExperimentalFeature'
)

$webParameters = @(
    'SkipCertificateCheck', 'Authentication', 'Token', 'StatusCodeVariable', 'ResponseHeadersVariable',
    'SkipHttpErrorCheck', 'SkipHeaderValidation', 'SslProtocol', 'MaximumRetryCount', 'RetryIntervalSec',
    'Form', 'Resume', 'NoProxy', 'AllowUnencryptedAuthentication', 'PreserveAuthorizationOnRedirect',
    'CustomMethod', 'HttpVersion', 'FollowRelLink', 'MaximumFollowRelLink', 'ConnectionTimeoutSeconds',
    'OperationTimeoutSeconds', 'AllowInsecureRedirect', 'PreserveHttpMethodOnRedirect', 'UnixSocket'
)
$script:ParametersNotIn51 = @{
    'ConvertFrom-Json' = @('AsHashtable', 'Depth', 'NoEnumerate', 'DateKind')
    'ConvertTo-Json'   = @('EnumsAsStrings', 'AsArray', 'EscapeHandling')
    'Invoke-RestMethod' = $webParameters
    'Invoke-WebRequest' = $webParameters
    'ForEach-Object'   = @('Parallel', 'ThrottleLimit', 'TimeoutSeconds', 'AsJob', 'UseNewRunspace')
    'Get-Content'      = @('AsByteStream')
    'Set-Content'      = @('AsByteStream')
    'Add-Content'      = @('AsByteStream')
    'Split-Path'       = @('LeafBase', 'Extension')
    'Sort-Object'      = @('Top', 'Bottom')
    'Select-String'    = @('Raw', 'NoEmphasis')
    'Get-Date'         = @('AsUTC', 'UnixTimeSeconds')
    'Start-Process'    = @('Environment')
    'Get-ChildItem'    = @('FollowSymlink')
    'Get-Random'       = @('Shuffle')
    'Join-Path'        = @('AdditionalChildPath')
}
$script:Aliases = @{
    '%' = 'ForEach-Object'; 'foreach' = 'ForEach-Object'; 'irm' = 'Invoke-RestMethod'; 'iwr' = 'Invoke-WebRequest'
    'curl' = 'Invoke-WebRequest'; 'wget' = 'Invoke-WebRequest'; 'gc' = 'Get-Content'; 'sc' = 'Set-Content'
    'ac' = 'Add-Content'; 'sort' = 'Sort-Object'; 'sls' = 'Select-String'; 'gci' = 'Get-ChildItem'
    'dir' = 'Get-ChildItem'; 'ls' = 'Get-ChildItem'; 'saps' = 'Start-Process'; 'start' = 'Start-Process'
}
$script:EncodingsOnlyIn7 = @('utf8NoBOM', 'utf8BOM', 'ansi')
$script:EncodingsOnlyIn51 = @('Byte')
$script:VariablesNotIn51 = @('IsWindows', 'IsLinux', 'IsMacOS', 'IsCoreCLR', 'PSStyle', 'PSNativeCommandArgumentPassing',
    'PSNativeCommandUseErrorActionPreference')

function New-Finding {
    param([System.Management.Automation.Language.Ast] $Ast, [string] $What, [string] $Origin)
    [pscustomobject]@{
        Line = $Ast.Extent.StartLineNumber
        What = $What
        Text = $Ast.Extent.Text.Split("`n")[0].Trim()
        Origin = $Origin
    }
}

function Find-PowerShell7Construct {
    <#
        Every construct of -Ast (or of the script text -Script) that Windows PowerShell 5.1
        cannot run; nothing when there is none. Parse errors are findings too.
    #>
    [CmdletBinding(DefaultParameterSetName = 'Ast')]
    param(
        [Parameter(Mandatory, ParameterSetName = 'Ast')] [System.Management.Automation.Language.Ast] $Ast,
        [Parameter(Mandatory, ParameterSetName = 'Script')] [string] $Script,
        [string] $Origin = ''
    )
    if ($PSCmdlet.ParameterSetName -eq 'Script') {
        $tokens = $null; $errors = $null
        $Ast = [System.Management.Automation.Language.Parser]::ParseInput($Script, [ref]$tokens, [ref]$errors)
        foreach ($e in $errors) {
            [pscustomobject]@{ Line = $e.Extent.StartLineNumber; What = "parse error: $($e.Message)"; Text = $e.Extent.Text; Origin = $Origin }
        }
    }
    $L = 'System.Management.Automation.Language'
    $nodes = $Ast.FindAll({ $true }, $true)
    foreach ($node in $nodes) {
        $type = $node.GetType().Name
        switch ($type) {
            'TernaryExpressionAst' { New-Finding $node 'ternary operator ?: (PowerShell 7)' $Origin }
            'PipelineChainAst' { New-Finding $node "pipeline chain $($node.Operator) (&& / ||, PowerShell 7)" $Origin }
            'BinaryExpressionAst' {
                if ($node.Operator -eq 'QuestionQuestion') { New-Finding $node 'null-coalescing ?? (PowerShell 7)' $Origin }
            }
            'AssignmentStatementAst' {
                if ($node.Operator -eq 'QuestionQuestionEquals') { New-Finding $node 'null-coalescing assignment ??= (PowerShell 7)' $Origin }
            }
            { $_ -in 'MemberExpressionAst', 'InvokeMemberExpressionAst', 'IndexExpressionAst' } {
                if ($node.PSObject.Properties['NullConditional'] -and $node.NullConditional) {
                    New-Finding $node 'null-conditional ?. or ?[] (PowerShell 7)' $Origin
                }
            }
            'ScriptBlockAst' {
                if ($node.PSObject.Properties['CleanBlock'] -and $null -ne $node.CleanBlock) {
                    New-Finding $node.CleanBlock 'clean block (PowerShell 7.3)' $Origin
                }
            }
            'PipelineAst' {
                if ($node.PSObject.Properties['Background'] -and $node.Background) {
                    New-Finding $node 'background operator & (PowerShell 6)' $Origin
                }
            }
            'ExpandableStringExpressionAst' {
                if ($node.Extent.Text -match '`u\{') { New-Finding $node 'escape `u{...} (PowerShell 6)' $Origin }
            }
            'ConstantExpressionAst' {
                if ($node.Extent.Text -match '^(?i)(0x[0-9a-f]+|[0-9]+)(u|s|us|y|uy|n|ul|ls)(kb|mb|gb|tb|pb)?$') {
                    New-Finding $node 'number type suffix u/s/y/n (PowerShell 6.2/7)' $Origin
                }
            }
            'VariableExpressionAst' {
                if ($script:VariablesNotIn51 -contains $node.VariablePath.UserPath) {
                    New-Finding $node "automatic variable `$$($node.VariablePath.UserPath) (PowerShell 6+; `$null on 5.1)" $Origin
                }
            }
            'StringConstantExpressionAst' {
                if ($node.StringConstantType -like 'DoubleQuoted*' -and $node.Extent.Text -match '`u\{') {
                    New-Finding $node 'escape `u{...} (PowerShell 6)' $Origin
                }
                if ($node.StringConstantType -eq 'SingleQuotedHereString') {
                    $inner = $null; $innerErrors = $null
                    $innerAst = [System.Management.Automation.Language.Parser]::ParseInput($node.Value, [ref]$inner, [ref]$innerErrors)
                    if (-not $innerErrors) {
                        foreach ($f in (Find-PowerShell7Construct -Ast $innerAst -Origin "here-string at line $($node.Extent.StartLineNumber)")) {
                            $f.Line += $node.Extent.StartLineNumber
                            $f
                        }
                    }
                }
            }
            'CommandAst' {
                Find-CommandFinding -Command $node -Origin $Origin
            }
        }
    }
}

function Find-CommandFinding {
    param([System.Management.Automation.Language.CommandAst] $Command, [string] $Origin)
    $name = $Command.GetCommandName()
    if (-not $name) { return }
    $name = ($name -split '\\')[-1]
    if ($script:Aliases.ContainsKey($name)) { $name = $script:Aliases[$name] }
    if ($script:CmdletsNotIn51 -contains $name) {
        New-Finding $Command "cmdlet $name (not in Windows PowerShell 5.1)" $Origin
        return
    }
    $elements = $Command.CommandElements
    $forbidden = @()
    if ($script:ParametersNotIn51.ContainsKey($name)) { $forbidden = @($script:ParametersNotIn51[$name]) }
    $positional = 0
    for ($i = 1; $i -lt $elements.Count; $i++) {
        $element = $elements[$i]
        if ($element -is [System.Management.Automation.Language.CommandParameterAst]) {
            $given = $element.ParameterName
            foreach ($p in $forbidden) {
                if ($p -eq $given -or ($given.Length -ge 4 -and $p.StartsWith($given, [StringComparison]::OrdinalIgnoreCase))) {
                    New-Finding $element "$name -$p (not in Windows PowerShell 5.1)" $Origin
                }
            }
            if ($given -eq 'Encoding') {
                $value = $element.Argument
                if ($null -eq $value -and $i + 1 -lt $elements.Count) { $value = $elements[$i + 1]; $i++ }
                if ($value -is [System.Management.Automation.Language.StringConstantExpressionAst]) {
                    if ($script:EncodingsOnlyIn7 -contains $value.Value) {
                        New-Finding $element "-Encoding $($value.Value) (PowerShell 6+; 5.1 knows UTF8, Unicode, ASCII...)" $Origin
                    }
                    if ($script:EncodingsOnlyIn51 -contains $value.Value) {
                        New-Finding $element "-Encoding $($value.Value) (5.1 only; PowerShell 7 uses -AsByteStream)" $Origin
                    }
                }
            } elseif ($null -eq $element.Argument -and $i + 1 -lt $elements.Count -and
                      $elements[$i + 1] -isnot [System.Management.Automation.Language.CommandParameterAst]) {
                # A parameter and its value; switches are rare enough here to count as taking one.
                $i++
            }
        } else {
            $positional++
        }
    }
    if ($name -eq 'Join-Path' -and $positional -gt 2) {
        New-Finding $Command 'Join-Path with more than one child path (-AdditionalChildPath is PowerShell 6)' $Origin
    }
}

function Get-ShippedPowerShellFile {
    <#
        The PowerShell files vmbusops ships to Windows: everything under host_agent/, and the
        scripts under src/ (the guest invoker, run on hosts and in guests). A file that declares
        `#Requires -Version 6` or more, or `#Requires -PSEdition Core`, says it is not for 5.1:
        PowerShell enforces that declaration, so it is left out.
    #>
    param([Parameter(Mandatory)] [string] $Root)
    $candidates = @(
        Get-ChildItem -Recurse -File -Path (Join-Path $Root 'host_agent') -Include '*.ps1', '*.psm1', '*.psd1', '*.psrc', '*.pssc'
        Get-ChildItem -Recurse -File -Path (Join-Path $Root 'src') -Include '*.ps1'
    )
    foreach ($file in $candidates) {
        $tokens = $null; $errors = $null
        $requires = [System.Management.Automation.Language.Parser]::ParseFile($file.FullName, [ref]$tokens, [ref]$errors).ScriptRequirements
        if ($requires -and (($requires.RequiredPSVersion -and $requires.RequiredPSVersion.Major -ge 6) -or
                ($requires.RequiredPSEditions -contains 'Core' -and $requires.RequiredPSEditions -notcontains 'Desktop'))) {
            continue
        }
        $file
    }
}

function Test-WindowsPowerShellEncoding {
    <#
        Windows PowerShell 5.1 reads a script without a byte order mark as the ANSI code page: a
        UTF-8 file without BOM is read wrong as soon as it holds a byte over 0x7F. Returns the
        reason a file would be misread, or nothing.
    #>
    param([Parameter(Mandatory)] [byte[]] $Bytes)
    if ($Bytes.Length -ge 3 -and $Bytes[0] -eq 0xEF -and $Bytes[1] -eq 0xBB -and $Bytes[2] -eq 0xBF) { return }
    if ($Bytes.Length -ge 2 -and (($Bytes[0] -eq 0xFF -and $Bytes[1] -eq 0xFE) -or ($Bytes[0] -eq 0xFE -and $Bytes[1] -eq 0xFF))) { return }
    for ($i = 0; $i -lt $Bytes.Length; $i++) {
        if ($Bytes[$i] -gt 0x7F) { return "byte 0x$('{0:X2}' -f $Bytes[$i]) at offset $i in a file without a byte order mark" }
    }
}

Export-ModuleMember -Function Find-PowerShell7Construct, Test-WindowsPowerShellEncoding, Get-ShippedPowerShellFile
