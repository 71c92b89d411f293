-- params: none. Changes when another connection commits to the file.
PRAGMA data_version
