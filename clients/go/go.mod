module github.com/promptgate/promptgate/clients/go

go 1.19
